"""kit.eval.lvis: federated LVIS AP against the lvis package and pycocotools, and its rules one by one."""
import logging
import math

import numpy as np
import pytest
import torch

from kit.eval.coco import coco_evaluate
from kit.eval.lvis import METRICS, evaluate_lvis_scenes, lvis_evaluate
from tests._lvis_reference import lvis_reference

logging.getLogger("lvis").setLevel(logging.ERROR)


def random_set(seed, num_images=12, num_classes=6, exhaustive=False, dets_per_image=40):
    """Random LVIS ground truth and results: boxes near the objects and anywhere, neg / not-exhaustive lists."""
    rng = np.random.default_rng(seed)
    groups = ["r", "c", "f"]
    categories = [{"id": c, "name": f"c{c}", "frequency": groups[c % 3], "image_count": 0} for c in range(num_classes)]
    images, annotations, results = [], [], []
    for i in range(num_images):
        present = [c for c in range(num_classes) if rng.random() < 0.35]
        absent = [c for c in range(num_classes) if c not in present]
        neg = absent if exhaustive else [c for c in absent if rng.random() < 0.5]
        not_exhaustive = [] if exhaustive else [c for c in present if rng.random() < 0.4]
        images.append({"id": i, "width": 64, "height": 64, "neg_category_ids": neg,
                       "not_exhaustive_category_ids": not_exhaustive})
        boxes = []
        for c in present:
            for _ in range(rng.integers(1, 4)):
                x, y = rng.uniform(0, 48, 2)
                w, h = rng.uniform(4, 16, 2)
                annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": c,
                                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
                boxes.append((c, x, y, w, h))
        for _ in range(dets_per_image):
            if boxes and rng.random() < 0.6:  # a jittered object, sometimes with the wrong class
                c, x, y, w, h = boxes[rng.integers(len(boxes))]
                c = c if rng.random() < 0.8 else int(rng.integers(num_classes))
                x, y, w, h = x + rng.normal(0, 2), y + rng.normal(0, 2), w * rng.uniform(0.8, 1.2), h * rng.uniform(0.8, 1.2)
            else:
                c = int(rng.integers(num_classes))
                x, y = rng.uniform(0, 48, 2)
                w, h = rng.uniform(4, 16, 2)
            results.append({"image_id": i, "category_id": int(c), "bbox": [float(x), float(y), float(w), float(h)],
                            "score": float(rng.random())})
    return {"images": images, "annotations": annotations, "categories": categories}, results


def same(a, b, tol=1e-9):
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_lvis_package(seed, tmp_path):
    gt, results = random_set(seed)
    assert any(img["not_exhaustive_category_ids"] for img in gt["images"])
    ours, ref = lvis_evaluate(gt, results), lvis_reference(gt, results, tmp_path)
    for name in METRICS:
        assert same(ours[name], ref[name]), (name, ours[name], ref[name])


def test_agrees_with_lvis_package_under_the_300_cap(tmp_path):
    gt, results = random_set(7, num_images=4, dets_per_image=400)
    ours, ref = lvis_evaluate(gt, results), lvis_reference(gt, results, tmp_path)
    assert all(same(ours[m], ref[m]) for m in METRICS), (ours, ref)
    assert not same(ours["AP"], lvis_evaluate(gt, results, max_dets=400)["AP"])


def one_image(neg=(), not_exhaustive=()):
    gt = {"images": [{"id": 0, "width": 64, "height": 64, "neg_category_ids": list(neg),
                      "not_exhaustive_category_ids": list(not_exhaustive)}],
          "annotations": [{"id": 1, "image_id": 0, "category_id": 0, "bbox": [10, 10, 20, 20], "area": 400}],
          "categories": [{"id": c, "name": f"c{c}", "frequency": "f"} for c in range(3)]}
    hit = {"image_id": 0, "category_id": 0, "bbox": [10, 10, 20, 20], "score": 0.5}
    return gt, hit


def test_class_outside_pos_and_neg_is_never_a_false_positive():
    gt, hit = one_image()
    stray = {"image_id": 0, "category_id": 1, "bbox": [40, 40, 10, 10], "score": 0.9}  # class 1: unverified
    assert lvis_evaluate(gt, [hit, stray])["AP"] == pytest.approx(1.0)
    gt_neg, _ = one_image(neg=[1])  # class 1 verified absent: now a false positive ranked above the hit
    assert lvis_evaluate(gt_neg, [hit, stray])["AP"] == pytest.approx(1.0)  # AP of class 0 only; class 1 has no GT
    stray0 = dict(stray, category_id=0)  # a false positive of class 0 itself, above the hit
    assert lvis_evaluate(gt, [hit, stray0])["AP"] < 0.6


def test_unmatched_detection_of_not_exhaustive_class_is_ignored():
    gt, hit = one_image()
    miss = {"image_id": 0, "category_id": 0, "bbox": [40, 40, 10, 10], "score": 0.9}
    assert lvis_evaluate(gt, [hit, miss])["AP"] < 0.6
    gt_ne, _ = one_image(not_exhaustive=[0])
    assert lvis_evaluate(gt_ne, [hit, miss])["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(3))
def test_agrees_with_pycocotools_where_rules_coincide(seed):
    gt, results = random_set(seed + 10, exhaustive=True, dets_per_image=30)  # <= 100 per image and class
    coco = coco_evaluate(gt, results, image_size=64)
    ours = lvis_evaluate(gt, results)
    assert same(ours["AP"], coco["AP"]) and same(ours["AP50"], coco["AP50"]) and same(ours["AP75"], coco["AP75"])


def test_no_detections_is_zero_ap_and_groups_without_gt_are_nan():
    gt, _ = one_image()
    out = lvis_evaluate(gt, [])
    assert out["AP"] == 0 and out["APf"] == 0 and math.isnan(out["APr"]) and math.isnan(out["APc"])
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    assert lvis_evaluate(gt, [empty])["AP"] == 0


def test_per_class_and_scene_convenience():
    from kit.data.longtail_scenes import LongTailSceneConfig, class_groups, generate, to_lvis
    scenes = generate(LongTailSceneConfig(60, num_classes=12, seed=3))
    perfect = [{"boxes": b, "scores": torch.ones(len(l)), "labels": l}
               for b, l in (scenes.targets(i, truth=True) for i in range(len(scenes)))]
    oracle = evaluate_lvis_scenes(scenes, perfect, truth=True, per_class=True)
    assert oracle["AP"] == pytest.approx(1.0)
    federated = evaluate_lvis_scenes(scenes, perfect, class_groups(scenes))
    assert federated["AP"] == pytest.approx(1.0)  # the extra true objects are of not-exhaustive classes: ignored
    assert set(oracle["per_class"]) == set(range(12))


def test_evaluate_lvis_detector_runs_detect_in_eval_mode():
    from kit.data.longtail_scenes import LongTailSceneConfig, generate
    from kit.eval.lvis import evaluate_lvis_detector
    scenes = generate(LongTailSceneConfig(30, image_size=32, num_classes=6, seed=8))

    class Oracle(torch.nn.Module):  # answers the truth of the images it is shown, in order
        def __init__(self):
            super().__init__()
            self.weight, self.seen, self.modes = torch.nn.Parameter(torch.zeros(1)), 0, []

        def detect(self, images):
            self.modes.append(self.training)
            out = []
            for _ in range(len(images)):
                boxes, labels = scenes.targets(self.seen, truth=True)
                out.append({"boxes": boxes, "scores": torch.ones(len(labels)), "labels": labels})
                self.seen += 1
            return out

    model = Oracle().train()
    metrics = evaluate_lvis_detector(model, scenes, truth=True, batch_size=8)
    assert metrics["AP"] == pytest.approx(1.0) and model.modes == [False] * 4 and model.training
