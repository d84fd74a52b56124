"""Bad input to the long-tail pieces (kit.data.longtail_scenes, kit.eval.lvis, the class-aware
samplers of kit.data.sampling): each row a call that must be refused, with the exception type
and a phrase of its message. Legitimate edge cases (no detections at all, an image without
detections) are at the end, and must give numbers."""
import math

import pytest
import torch

from kit.data.longtail_scenes import (LongTailSceneConfig, aux_view, class_groups, generate, image_counts,
                                      to_lvis)
from kit.data.class_sampling import class_aware_sampler, repeat_factor_sampler, repeat_factors
from kit.data.shapes import ShapeSceneConfig
from kit.eval.lvis import evaluate_lvis_scenes, lvis_evaluate

NAN = float("nan")
SCENES = generate(LongTailSceneConfig(20, image_size=32, num_classes=6, seed=9))
GROUPS = class_groups(SCENES)
PRESENCE = torch.tensor([[True, False], [True, True], [False, True]])


def gt(**image):
    base = {"id": 0, "width": 32, "height": 32, "neg_category_ids": [1], "not_exhaustive_category_ids": []}
    return {"images": [{**base, **image}],
            "annotations": [{"id": 1, "image_id": 0, "category_id": 0, "bbox": [2, 2, 10, 10], "area": 100.0}],
            "categories": [{"id": 0, "name": "a", "frequency": "f"}, {"id": 1, "name": "b", "frequency": "r"}]}


def det(boxes=((2.0, 2.0, 12.0, 12.0),), scores=(0.9,), labels=(0,)):
    return {"boxes": torch.tensor(boxes), "scores": torch.tensor(scores), "labels": torch.tensor(labels)}


BAD = [
    ("config: NaN exponent", lambda: LongTailSceneConfig(10, exponent=NAN), ValueError, r"must be finite"),
    ("config: 31 classes", lambda: LongTailSceneConfig(10, num_classes=31), ValueError,
     r"num_classes must be in 1..30 \(10 shapes x 3 hue families\)"),
    ("config: p_miss above 1", lambda: LongTailSceneConfig(10, p_miss=1.5), ValueError, r"p_miss must be in \[0, 1\]"),
    ("config: negative neg_prob", lambda: LongTailSceneConfig(10, neg_prob=-0.1), ValueError, r"neg_prob must be in \[0, 1\]"),
    ("config: zero top_fraction", lambda: LongTailSceneConfig(10, top_fraction=0), ValueError, r"top_fraction must be in \(0, 1\]"),
    ("config: zero count_scale", lambda: LongTailSceneConfig(10, count_scale=0.0), ValueError, r"count_scale must be None or a finite number > 0"),
    ("config: inf count_scale", lambda: LongTailSceneConfig(10, count_scale=math.inf), ValueError, r"count_scale must be None or a finite"),
    ("config: no images", lambda: LongTailSceneConfig(0), ValueError, r"num_images must be >= 1"),
    ("generate: a shapes config", lambda: generate(ShapeSceneConfig(4)), TypeError, r"config must be a LongTailSceneConfig, got ShapeSceneConfig"),
    ("counts: not long-tail scenes", lambda: image_counts([1, 2]), TypeError, r"scenes must be LongTailScenes"),
    ("groups: not long-tail scenes", lambda: class_groups(None), TypeError, r"train must be LongTailScenes"),
    ("to_lvis: groups of another length", lambda: to_lvis(SCENES, ["f"] * 5), ValueError, r"frequency must be 6 groups, each one of \('r', 'c', 'f'\)"),
    ("to_lvis: unknown group", lambda: to_lvis(SCENES, ["x"] * 6), ValueError, r"frequency must be 6 groups"),
    ("aux: no groups", lambda: aux_view(SCENES, GROUPS, ()), ValueError, r"groups must be a non-empty tuple of \('r', 'c', 'f'\)"),
    ("aux: unknown group", lambda: aux_view(SCENES, GROUPS, ("frequent",)), ValueError, r"groups must be a non-empty tuple"),
    ("lvis: not a dict", lambda: lvis_evaluate([], []), ValueError, r"lvis_gt must be an LVIS-format dict"),
    ("lvis: image without neg list", lambda: lvis_evaluate({**gt(), "images": [{"id": 0}]}, []), ValueError,
     r"image 0 needs neg_category_ids"),
    ("lvis: neg list of an unknown class", lambda: lvis_evaluate(gt(neg_category_ids=[7]), []), ValueError,
     r"image 0 needs neg_category_ids, a list of category ids"),
    ("lvis: category without frequency", lambda: lvis_evaluate({**gt(), "categories": [{"id": 0}, {"id": 1, "frequency": "f"}]}, []),
     ValueError, r"category 0 has frequency None; need 'r', 'c' or 'f'"),
    ("lvis: NaN ground-truth box", lambda: lvis_evaluate({**gt(), "annotations": [{"id": 1, "image_id": 0, "category_id": 0,
                                                                                 "bbox": [NAN, 0, 1, 1], "area": 1.0}]}, []),
     ValueError, r"annotation 1 has bbox \[nan, 0, 1, 1\]"),
    ("lvis: no images", lambda: lvis_evaluate({**gt(), "images": []}, []), ValueError, r"at least one image and one category"),
    ("lvis: zero max_dets", lambda: lvis_evaluate(gt(), [det()], max_dets=0), ValueError, r"max_dets must be an int >= 1"),
    ("lvis: two detection sets for one image", lambda: lvis_evaluate(gt(), [det(), det()]), ValueError,
     r"2 detection sets for 1 images; need one per image"),
    ("lvis: NaN box", lambda: lvis_evaluate(gt(), [det(boxes=((NAN, 0.0, 1.0, 1.0),))]), ValueError, r"non-finite boxes"),
    ("lvis: inf score", lambda: lvis_evaluate(gt(), [det(scores=(math.inf,))]), ValueError, r"non-finite scores"),
    ("lvis: float labels", lambda: lvis_evaluate(gt(), [det(labels=(0.0,))]), TypeError, r"must be an integer tensor"),
    ("lvis: unknown label", lambda: lvis_evaluate(gt(), [det(labels=(5,))]), ValueError, r"no category of the ground truth"),
    ("lvis: boxes of shape (1, 5)", lambda: lvis_evaluate(gt(), [det(boxes=((0.0,) * 5,))]), ValueError, r"must have shape \(D, 4\)"),
    ("lvis: NaN result score", lambda: lvis_evaluate(gt(), [{"image_id": 0, "category_id": 0, "bbox": [0, 0, 1, 1], "score": NAN}]),
     ValueError, r"non-finite scores"),
    ("lvis: result of an unknown image", lambda: lvis_evaluate(gt(), [{"image_id": 3, "category_id": 0, "bbox": [0, 0, 1, 1], "score": 1}]),
     ValueError, r"image_id must be an image of the ground truth"),
    ("lvis scenes: too few detection sets", lambda: evaluate_lvis_scenes(SCENES, [det()]), ValueError,
     r"1 detection sets for 20 images; need one per image, in order"),
    ("rfs: float presence", lambda: repeat_factors(PRESENCE.float(), 0.1), ValueError, r"presence must be an \(N, C\) bool tensor"),
    ("rfs: 1-d presence", lambda: repeat_factors(PRESENCE[0], 0.1), ValueError, r"presence must be an \(N, C\) bool tensor"),
    ("rfs: no images", lambda: repeat_factors(PRESENCE[:0], 0.1), ValueError, r"at least one image and one class"),
    ("rfs: NaN threshold", lambda: repeat_factors(PRESENCE, NAN), ValueError, r"threshold must be a finite number > 0"),
    ("rfs: zero threshold", lambda: repeat_factor_sampler(PRESENCE, 1, 0, 0.0), ValueError, r"threshold must be a finite number > 0"),
    ("rfs: batch above the images", lambda: repeat_factor_sampler(PRESENCE, 4, 0, 0.1), ValueError, r"batch_size must be an int in 1..3"),
    ("rfs: negative step", lambda: repeat_factor_sampler(PRESENCE, 1, 0, 0.1)(-1), ValueError, r"step must be >= 0"),
    ("cas: zero batch", lambda: class_aware_sampler(PRESENCE, 0, 0), ValueError, r"batch_size must be an int >= 1"),
    ("cas: no class anywhere", lambda: class_aware_sampler(torch.zeros(3, 2, dtype=torch.bool), 2, 0), ValueError,
     r"presence holds no class in any image"),
    ("cas: a list, not a tensor", lambda: class_aware_sampler([[True]], 2, 0), ValueError, r"got list"),
]


@pytest.mark.parametrize("build, error, phrase", [row[1:] for row in BAD], ids=[row[0] for row in BAD])
def test_bad_input_is_refused(build, error, phrase):
    with pytest.raises(error, match=phrase):
        build()




def test_legitimate_edge_cases_give_numbers():
    none = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    assert lvis_evaluate(gt(), [none])["AP"] == 0  # an image with no detections
    assert lvis_evaluate(gt(), [])["AP"] == 0  # no detections at all
    out = evaluate_lvis_scenes(SCENES, [none] * len(SCENES), GROUPS)
    assert out["AP"] == 0
    assert repeat_factors(torch.zeros(3, 2, dtype=torch.bool), 0.1).tolist() == [1.0, 1.0, 1.0]  # images with no class
