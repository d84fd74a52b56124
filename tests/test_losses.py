import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from kit.det.losses import focal_loss_prob, giou_loss, one_hot, quality_focal_loss_prob


def test_focal_on_probabilities_equals_torchvision_on_logits():
    torch.manual_seed(0)
    logits = torch.randn(40, 5) * 3
    targets = one_hot(torch.randint(-1, 5, (40,)), 5)
    ours = focal_loss_prob(logits.sigmoid(), targets)
    reference = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="none")
    # rtol: in float32, 1 - sigmoid(x) loses digits for |x| > ~8, where the loss is large anyway
    # (the old atol-only check failed for about half of the random draws; 300 of 300 pass this one)
    assert torch.allclose(ours, reference, rtol=1e-3, atol=1e-5)


def test_one_hot_background_rows_are_zero():
    target = one_hot(torch.tensor([2, -1, 0]), 3)
    assert target.tolist() == [[0, 0, 1], [0, 0, 0], [1, 0, 0]]
    with pytest.raises(ValueError, match="labels"):
        one_hot(torch.tensor([3]), 3)


def test_quality_focal_loss_zero_at_the_target_and_p_squared_bce_for_negatives():
    probs = torch.rand(6, 3) * 0.9 + 0.05
    labels = torch.tensor([0, -1, 2, -1, 1, 0])
    quality = torch.rand(6)
    probs_at_target = probs.clone()
    pos = labels >= 0
    probs_at_target[pos.nonzero().flatten(), labels[pos]] = quality[pos]
    loss = quality_focal_loss_prob(probs_at_target, labels, quality)
    assert torch.allclose(loss[pos.nonzero().flatten(), labels[pos]], torch.zeros(int(pos.sum())), atol=1e-7)
    neg = quality_focal_loss_prob(probs, labels, quality)[~pos]
    expected = probs[~pos] ** 2 * F.binary_cross_entropy(probs[~pos], torch.zeros_like(probs[~pos]), reduction="none")
    assert torch.allclose(neg, expected)


def test_probability_losses_reject_logits():
    with pytest.raises(ValueError, match="probabilities"):
        focal_loss_prob(torch.randn(4, 3) * 5, torch.zeros(4, 3))


def test_giou_loss_is_torchvision():
    a = torch.tensor([[0.0, 0, 10, 10], [0, 0, 4, 4]])
    b = torch.tensor([[0.0, 0, 10, 10], [5, 5, 9, 9]])
    assert torch.allclose(giou_loss(a, b), generalized_box_iou_loss(a, b, reduction="none"))
    assert giou_loss(a, b)[0] == 0 and giou_loss(a, b)[1] > 1
