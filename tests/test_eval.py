import math

import pytest
import torch

from kit.data.shapes import to_coco
from kit.eval.coco import area_ranges, coco_evaluate


def gt_as_detections(scenes, shift=0.0):
    dets = []
    for i in range(len(scenes)):
        boxes, labels = scenes.targets(i)
        dets.append({"boxes": boxes + shift, "scores": torch.ones(len(boxes)), "labels": labels})
    return dets


def test_ground_truth_as_predictions_gives_ap_one(scenes):
    metrics = coco_evaluate(to_coco(scenes), gt_as_detections(scenes), scenes.config.image_size)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    for group in ("APs", "APm", "APl"):
        assert math.isnan(metrics[group]) or metrics[group] == pytest.approx(1.0)


def test_shifted_boxes_score_lower_and_empty_scores_zero(scenes):
    coco = to_coco(scenes)
    shifted = coco_evaluate(coco, gt_as_detections(scenes, shift=3.0), scenes.config.image_size)
    assert shifted["AP"] < 0.9 and shifted["AP50"] > shifted["AP75"]
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}] * len(scenes)
    assert coco_evaluate(coco, empty, scenes.config.image_size)["AP"] == 0.0


def test_area_ranges_scale_with_image_size():
    assert area_ranges(256)[1][1] == pytest.approx(32 ** 2) and area_ranges(256)[3][0] == pytest.approx(96 ** 2)
    assert area_ranges(128)[1][1] == pytest.approx(16 ** 2)
    with pytest.raises(ValueError):
        area_ranges(0)


def test_detection_count_must_match_images(scenes):
    with pytest.raises(ValueError, match="detection sets"):
        coco_evaluate(to_coco(scenes), gt_as_detections(scenes)[:2], scenes.config.image_size)
