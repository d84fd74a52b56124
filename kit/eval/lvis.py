"""Federated LVIS box AP (AP, AP50, AP75, APr, APc, APf) on pycocotools' COCOeval.

LVIS differs from COCO in four rules, and each is applied around pycocotools' own matching
and precision-recall interpolation, so nothing of the matching is re-written here:

1. at most ``max_dets`` (300) detections per image, the best by score *across* classes,
   are kept before anything else (COCO keeps 100 per image and class);
2. a detection of class c on image i is evaluated only if c has ground truth on i or is in
   i's ``neg_category_ids`` (a federated set says nothing about the other classes);
3. an *unmatched* detection of a class in i's ``not_exhaustive_category_ids`` is ignored,
   not a false positive (the annotation may have missed that object): COCOeval's
   ``evaluateImg`` is wrapped to mark those ignored;
4. AP averages the classes with ground truth in the evaluated images; APr, APc, APf average
   the classes of each ``frequency`` group.

Area ranges are not used (the "all" range only). The result equals ``lvis.LVISEval``'s
(tests/test_lvis_eval.py checks it to 1e-9 on random sets).
"""
from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import torch

from kit.eval.coco import detections_to_coco

METRICS = ("AP", "AP50", "AP75", "APr", "APc", "APf")


def check_lvis_gt(lvis_gt: dict) -> None:
    """An LVIS-format dict: images with neg/not-exhaustive lists, categories with a frequency."""
    if not isinstance(lvis_gt, dict) or not {"images", "annotations", "categories"} <= set(lvis_gt):
        raise ValueError("lvis_gt must be an LVIS-format dict with images, annotations and categories "
                         "(kit.data.longtail_scenes.to_lvis)")
    categories = {c["id"] for c in lvis_gt["categories"]}
    if not lvis_gt["images"] or not categories:
        raise ValueError("lvis_gt needs at least one image and one category")
    for c in lvis_gt["categories"]:
        if c.get("frequency") not in ("r", "c", "f"):
            raise ValueError(f"category {c.get('id')} has frequency {c.get('frequency')!r}; need 'r', 'c' or 'f'")
    for image in lvis_gt["images"]:
        for field in ("neg_category_ids", "not_exhaustive_category_ids"):
            if field not in image or not set(image[field]) <= categories:
                raise ValueError(f"image {image.get('id')} needs {field}, a list of category ids "
                                 f"(got {image.get(field)!r:.100})")
    for ann in lvis_gt["annotations"]:
        x, y, w, h = ann["bbox"]
        if not np.isfinite([x, y, w, h, ann["area"]]).all() or w < 0 or h < 0:
            raise ValueError(f"annotation {ann.get('id')} has bbox {ann['bbox']} / area {ann['area']}; "
                             f"need finite [x, y, w, h] with w, h >= 0 and a finite area")


def federated_filter(lvis_gt: dict, results: list[dict], max_dets: int = 300) -> list[dict]:
    """Rules 1 and 2: the best ``max_dets`` results per image by score (stable order among ties),
    then only those whose class is positive or a verified negative on their image."""
    by_image: dict = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    positive: dict = {}
    for ann in lvis_gt["annotations"]:
        positive.setdefault(ann["image_id"], set()).add(ann["category_id"])
    evaluated = {img["id"]: positive.get(img["id"], set()) | set(img["neg_category_ids"]) for img in lvis_gt["images"]}
    kept = []
    for image_id, rs in by_image.items():
        best = sorted(rs, key=lambda r: -r["score"])[:max_dets]  # sorted is stable, as lvis' limit_dets_per_image
        kept += [r for r in best if r["category_id"] in evaluated[image_id]]
    return kept


def _federated_cocoeval(gt, dt, not_exhaustive: dict):
    """A COCOeval whose evaluateImg ignores unmatched detections of not-exhaustive classes (rule 3)."""
    from pycocotools.cocoeval import COCOeval

    class FederatedCOCOeval(COCOeval):
        def evaluateImg(self, imgId, catId, aRng, maxDet):
            result = super().evaluateImg(imgId, catId, aRng, maxDet)
            if result is not None and catId in not_exhaustive.get(imgId, ()):
                result["dtIgnore"] = result["dtIgnore"] | (result["dtMatches"] == 0)  # (T, D)
            return result

    return FederatedCOCOeval(gt, dt, iouType="bbox")


def lvis_evaluate(lvis_gt: dict, detections: list, max_dets: int = 300,
                  per_class: bool = False) -> dict:
    """Federated box AP of ``detections`` on ``lvis_gt`` (LVIS rules, see the module docstring).

    detections: per-image ``{boxes (D, 4) xyxy, scores (D,), labels (D,)}`` in the order of
    ``lvis_gt['images']`` (labels are category ids), or LVIS/COCO result dicts. Returns AP, AP50,
    AP75, APr, APc, APf in [0, 1]; a group without ground truth is NaN. With ``per_class`` also
    ``"per_class": {category_id: AP}`` (NaN for a class without ground truth). An empty
    detection list is legitimate: every AP with ground truth is 0.
    """
    from pycocotools.coco import COCO

    check_lvis_gt(lvis_gt)
    if not isinstance(max_dets, int) or max_dets < 1:
        raise ValueError(f"max_dets must be an int >= 1, got {max_dets!r}")
    categories = sorted(c["id"] for c in lvis_gt["categories"])
    image_ids = [img["id"] for img in lvis_gt["images"]]
    if detections and isinstance(detections[0], dict) and "boxes" in detections[0]:
        if len(detections) != len(image_ids):
            raise ValueError(f"{len(detections)} detection sets for {len(image_ids)} images; need one per image")
        results = detections_to_coco(detections, image_ids, categories)
    else:
        results = detections_to_coco(_results_as_detections(detections, image_ids), image_ids, categories)
    results = federated_filter(lvis_gt, results, max_dets)

    gt_dataset = copy.deepcopy(lvis_gt)
    for ann in gt_dataset["annotations"]:
        ann.setdefault("iscrowd", 0)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dataset
        gt.createIndex()
        if results:
            dt = gt.loadRes(results)
            not_exhaustive = {img["id"]: set(img["not_exhaustive_category_ids"]) for img in lvis_gt["images"]}
            evaluator = _federated_cocoeval(gt, dt, not_exhaustive)
            evaluator.params.catIds = categories
            evaluator.params.maxDets = [max_dets]
            evaluator.params.areaRng, evaluator.params.areaRngLbl = [[0.0, 1e10]], ["all"]
            evaluator.evaluate()
            evaluator.accumulate()
            precision = evaluator.eval["precision"][:, :, :, 0, 0]  # (T, R, K)
        else:  # nothing to match: precision 0 for every class with ground truth
            has_gt = np.isin(categories, [a["category_id"] for a in lvis_gt["annotations"]])
            precision = np.where(has_gt[None, None], 0.0, -1.0) * np.ones((10, 101, 1))
    return _summarise(precision, lvis_gt, categories, per_class)



def _results_as_detections(results: list, image_ids: list[int]) -> list[dict]:
    """Ready result dicts ``{image_id, category_id, bbox [x, y, w, h], score}`` -> one kit detection
    dict per image of ``image_ids`` (``{boxes (D, 4) xyxy, scores (D,), labels (D,)}``), which
    :func:`kit.eval.coco.detections_to_coco` checks (finite boxes and scores, known categories)."""
    fields = ("image_id", "category_id", "bbox", "score")
    per_image = {image: [] for image in image_ids}
    for index, result in enumerate(results):
        if not isinstance(result, dict) or not set(fields) <= set(result):
            raise ValueError(f"results[{index}] must be a dict with {list(fields)} (or pass per-image dicts with "
                             f"boxes, scores, labels), got {result!r:.200}")
        if result["image_id"] not in per_image:
            raise ValueError(f"results[{index}] has image_id {result['image_id']!r}; image_id must be an image of "
                             f"the ground truth")
        x, y, w, h = (float(v) for v in result["bbox"])
        if w < 0 or h < 0:
            raise ValueError(f"results[{index}] has bbox {result['bbox']!r}; bbox must be [x, y, w, h] with w >= 0 "
                             f"and h >= 0")
        per_image[result["image_id"]].append((x, y, x + w, y + h, float(result["score"]), int(result["category_id"])))
    detections = []
    for image in image_ids:
        rows = torch.tensor(per_image[image], dtype=torch.float64).reshape(-1, 6)  # (D, 6)
        detections.append({"boxes": rows[:, :4], "scores": rows[:, 4], "labels": rows[:, 5].long()})
    return detections


def _mean_valid(p: np.ndarray) -> float:
    return float(np.mean(p[p > -1])) if (p > -1).any() else float("nan")


def _summarise(precision: np.ndarray, lvis_gt: dict, categories: list, per_class: bool) -> dict:
    """AP over the valid (-1: no ground truth) entries of precision (T, R, K), overall and by group."""
    frequency = {c["id"]: c["frequency"] for c in lvis_gt["categories"]}
    groups = np.array([frequency[c] for c in categories])
    stats = {"AP": _mean_valid(precision), "AP50": _mean_valid(precision[0]), "AP75": _mean_valid(precision[5])}
    for group in ("r", "c", "f"):
        stats[f"AP{group}"] = _mean_valid(precision[:, :, groups == group])
    if per_class:
        stats["per_class"] = {c: _mean_valid(precision[:, :, k]) for k, c in enumerate(categories)}
    return stats


def evaluate_lvis_scenes(scenes, detections: list[dict], frequency: list[str] | None = None,
                         truth: bool = False, max_dets: int = 300, per_class: bool = False) -> dict:
    """:func:`lvis_evaluate` of the kit's per-image detections (labels 0..C-1) on a
    :class:`kit.data.longtail_scenes.LongTailScenes`: the federated annotation, or with ``truth``
    the full truth (the oracle). ``frequency``: the training split's
    :func:`~kit.data.longtail_scenes.class_groups` (default: ``scenes``' own)."""
    from kit.data.longtail_scenes import to_lvis

    if len(detections) != len(scenes):
        raise ValueError(f"{len(detections)} detection sets for {len(scenes)} images; need one per image, in order")
    return lvis_evaluate(to_lvis(scenes, frequency, truth), detections, max_dets, per_class)


def evaluate_lvis_detector(model, scenes, frequency: list[str] | None = None, truth: bool = False,
                           batch_size: int = 32, device=None, **postprocess_options) -> dict:
    """Run ``model.detect`` over ``scenes`` (as :func:`kit.eval.coco.evaluate_detector`) and return
    :func:`evaluate_lvis_scenes`' metrics. Pass ``max_per_image=300`` etc. through ``postprocess_options``."""
    from kit.eval.coco import scene_batches
    from kit.runtime import evaluating

    device = device or next(model.parameters()).device
    detections = []
    with evaluating(model):
        for images, _, _ in scene_batches(scenes, batch_size, device):
            detections += model.detect(images, **postprocess_options)
    return evaluate_lvis_scenes(scenes, detections, frequency, truth)
