import math

import pytest
import torch

from kit.eval.segmentation import confusion_matrix, iou_per_class, mean_iou, semantic_targets


def test_semantic_targets_paint_each_visible_mask_with_its_class(scenes):
    images, classes = semantic_targets(scenes, [0, 1, 2])
    assert images.shape == (3, 3, 64, 64) and classes.shape == (3, 64, 64) and classes.dtype == torch.long
    for b in range(3):
        for k in range(scenes.masks.shape[1]):
            if scenes.labels[b, k] >= 0:
                assert (classes[b][scenes.masks[b, k]] == scenes.labels[b, k] + 1).all()
        assert (classes[b][~scenes.masks[b].any(0)] == 0).all()


def test_mean_iou_by_hand():
    target = torch.tensor([0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 1, 1, 1, 2, 0])
    confusion = confusion_matrix(predicted, target, 4)
    assert confusion.sum() == 6 and confusion[0, 1] == 1 and confusion[2, 0] == 1
    iou = iou_per_class(confusion)
    assert torch.allclose(iou[:3], torch.tensor([1 / 3, 2 / 3, 1 / 2], dtype=torch.float64))
    assert math.isnan(iou[3])  # class 3 never occurs: left out of the mean
    assert abs(mean_iou(confusion) - (1 / 3 + 2 / 3 + 1 / 2) / 3) < 1e-12
    assert mean_iou(confusion_matrix(target, target, 3)) == 1.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="must match"):
        confusion_matrix(torch.zeros(3), torch.zeros(4), 2)
    with pytest.raises(ValueError, match="class ids"):
        confusion_matrix(torch.tensor([0, 2]), torch.tensor([0, 1]), 2)
