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


def test_xywh_results_keep_the_boxes(scenes):
    """COCO results are [x, y, w, h] of the xyxy input, and the input tensor is left as it was."""
    from kit.eval.coco import detections_to_coco

    boxes = torch.tensor([[1.0, 2.0, 11.0, 7.0], [3.5, 4.0, 4.5, 30.0]])
    copy = boxes.clone()
    results = detections_to_coco([{"boxes": boxes, "scores": torch.tensor([0.9, 0.1]), "labels": torch.tensor([0, 2])}])
    assert [r["bbox"] for r in results] == [[1.0, 2.0, 10.0, 5.0], [3.5, 4.0, 1.0, 26.0]]
    assert torch.equal(boxes, copy)


def test_predict_batches_covers_the_set_in_order_in_eval_mode_and_restores_the_mode(scenes):
    from kit.eval.coco import predict_batches

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))
            self.modes = []

        def forward(self, images):
            self.modes.append((self.training, torch.is_grad_enabled()))
            return images.shape[0]

    probe = Probe()
    seen = [(len(boxes), out) for _, boxes, _, out in predict_batches(probe, scenes, batch_size=10)]
    assert [out for _, out in seen] == [10, 10, len(scenes) - 20] and probe.training
    assert set(probe.modes) == {(False, False)}
