import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

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


def test_giou_loss_values_and_its_gradient_pull_the_box_onto_its_target():
    """0 on the target, 1 - IoU inside the union's hull, above 1 for disjoint boxes, below 2."""
    target = torch.tensor([[0.0, 0, 10, 10]] * 4)
    pred = torch.tensor([[0.0, 0, 10, 10],  # the target itself
                         [0.0, 0, 5, 10],  # half of it: IoU 0.5, the hull is the target
                         [20.0, 0, 30, 10],  # disjoint: IoU 0, hull 30 x 10 of which 20 x 10 is covered
                         [1000.0, 1000, 1001, 1001]], requires_grad=True)  # far away: close to 2
    loss = giou_loss(pred, target)
    expected = torch.tensor([0.0, 0.5, 1 + 1 / 3, 2.0])
    assert torch.allclose(loss[:3], expected[:3]) and 1.99 < float(loss[3].detach()) < 2
    loss[1:3].sum().backward()
    assert pred.grad[1, 2] < 0  # the half box grows to the right, towards x2 = 10
    assert pred.grad[2, 0] > 0  # the disjoint box moves left
