"""Lovász-softmax and soft Dice (kit.seg.seg_losses): the Lovász extension against the set
function it extends, 1 - IoU on hard predictions, Dice's formula, ignored pixels."""
import itertools

import pytest
import torch

from kit.eval.seg_metrics import iou_per_class_ignoring
from kit.seg.seg_losses import dice_loss, lovasz_grad, lovasz_softmax


def jaccard_set_loss(wrong: set, foreground: torch.Tensor) -> float:
    """Berman's Delta_J: |M| / |fg u M| for the set M of mispredicted pixels."""
    fg = {i for i, f in enumerate(foreground.tolist()) if f}
    union = fg | wrong
    return len(wrong) / len(union) if union else 0.0


def test_lovasz_grad_is_the_set_functions_increments_along_the_sorted_order():
    torch.manual_seed(0)
    for _ in range(20):
        foreground = (torch.rand(7) < 0.5).double()
        errors = torch.rand(7, dtype=torch.float64)
        errors_sorted, order = errors.sort(descending=True)
        weights = lovasz_grad(foreground[order])
        prefixes = [set(order[:i].tolist()) for i in range(8)]
        expected = [jaccard_set_loss(prefixes[i + 1], foreground) - jaccard_set_loss(prefixes[i], foreground)
                    for i in range(7)]
        torch.testing.assert_close(weights, torch.tensor(expected, dtype=torch.float64))


def test_lovasz_extension_equals_the_set_function_on_indicator_vectors():
    foreground = torch.tensor([1, 1, 0, 0, 1.0], dtype=torch.float64)
    for bits in itertools.product([0.0, 1.0], repeat=5):
        errors = torch.tensor(bits, dtype=torch.float64)
        errors_sorted, order = errors.sort(descending=True, stable=True)
        value = float(errors_sorted @ lovasz_grad(foreground[order]))
        assert value == pytest.approx(jaccard_set_loss({i for i, b in enumerate(bits) if b}, foreground))


def test_lovasz_softmax_on_hard_predictions_is_one_minus_iou_of_the_present_classes():
    torch.manual_seed(1)
    labels = torch.randint(0, 3, (2, 6, 6))
    labels[0, :2] = 255
    predicted = torch.randint(0, 4, (2, 6, 6))
    logits = torch.nn.functional.one_hot(predicted, 4).permute(0, 3, 1, 2).double() * 60  # softmax = one-hot
    ious = iou_per_class_ignoring(predicted, labels, 4, 255)
    present = labels[labels != 255].unique()
    expected = float((1 - ious[present]).mean())
    assert float(lovasz_softmax(logits, labels)) == pytest.approx(expected, abs=1e-9)


def test_lovasz_softmax_ignores_pixels_labelled_255_and_has_gradients():
    torch.manual_seed(2)
    logits = torch.randn(1, 3, 5, 5, requires_grad=True)
    labels = torch.randint(0, 3, (1, 5, 5))
    labels[0, 0] = 255
    loss = lovasz_softmax(logits, labels)
    loss.backward()
    assert 0 <= float(loss.detach()) <= 1
    assert float(logits.grad[0, :, 0].abs().sum()) == 0 and float(logits.grad.abs().sum()) > 0
    assert float(lovasz_softmax(logits, torch.full((1, 5, 5), 255)).detach()) == 0


def test_dice_loss_follows_its_formula_per_image_and_class_over_valid_pixels():
    torch.manual_seed(3)
    logits = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 4, 4))
    labels[1, 0, :] = 255
    p = logits.softmax(1)
    losses = []
    for n in range(2):
        valid = labels[n] != 255
        for c in range(3):
            pc, yc = p[n, c][valid], (labels[n][valid] == c).double()
            losses.append(1 - (2 * (pc * yc).sum() + 1) / ((pc ** 2).sum() + (yc ** 2).sum() + 1))
    torch.testing.assert_close(dice_loss(logits, labels), torch.stack(losses).mean())


def test_dice_loss_is_near_zero_when_the_prediction_is_the_target():
    labels = torch.randint(0, 3, (1, 8, 8), generator=torch.Generator().manual_seed(4))
    logits = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).double() * 60
    assert float(dice_loss(logits, labels)) < 1e-9
