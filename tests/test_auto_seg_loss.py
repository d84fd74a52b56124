"""Auto Seg-Loss surrogates (kit.seg.auto_seg_loss): the truth table, monotone curves, the
exact metrics on one-hot input (BF1 against SciPy's morphology), ignored pixels, gradients."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from kit.seg.auto_seg_loss import (OFFICIAL_BF1_CONTROL_POINTS, OFFICIAL_MIOU_CONTROL_POINTS, auto_seg_loss, bezier_curve, bf1_surrogate,
                                   control_points_from_theta, exact_miou_all_classes, miou_surrogate,
                                   num_parameters, one_hot_with_ignore, quadratic_bezier_root)


def random_points(metric: str, seed: int) -> torch.Tensor:
    theta = torch.rand(num_parameters(metric), generator=torch.Generator().manual_seed(seed)) * 0.98 + 0.01
    return control_points_from_theta(theta, metric)


def test_reparameterised_curves_keep_the_truth_table_and_are_monotone():
    x = torch.linspace(0, 1, 2001, dtype=torch.float64)
    for seed in range(30):
        for metric in ("mIoU", "BF1"):
            points = random_points(metric, seed).double()
            for curve in points.chunk(4 if metric == "BF1" else 2):
                y = bezier_curve(x, curve)
                assert float(y[0]) == pytest.approx(0, abs=1e-12) and float(y[-1]) == pytest.approx(1, abs=1e-12)
                assert bool((y[1:] >= y[:-1] - 1e-12).all())


def test_control_points_on_the_diagonal_give_the_identity():
    x = torch.rand(500, dtype=torch.float64)
    torch.testing.assert_close(bezier_curve(x, torch.tensor([0.2, 0.2, 0.5, 0.5, 0.7, 0.7], dtype=torch.float64)), x)
    torch.testing.assert_close(bezier_curve(x, torch.tensor([0.3, 0.3], dtype=torch.float64)), x)


def test_the_stable_root_is_the_official_root_and_solves_the_quadratic():
    u = torch.linspace(0, 1, 101, dtype=torch.float64)
    for a in (0.05, 0.3, 0.49, 0.51, 0.8, 0.97):
        t = quadratic_bezier_root(u, torch.tensor(a, dtype=torch.float64))
        official = (a - torch.sqrt(a ** 2 + (1 - 2 * a) * u)) / (2 * a - 1)
        torch.testing.assert_close(t, official)
        torch.testing.assert_close(2 * a * t * (1 - t) + t ** 2, u)
    torch.testing.assert_close(quadratic_bezier_root(u, torch.tensor(0.5, dtype=torch.float64)), u)


def test_curve_passes_through_its_joint_and_is_quadratic_bezier_in_each_piece():
    points = torch.tensor([0.1, 0.4, 0.5, 0.6, 0.8, 0.9], dtype=torch.float64)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    # first piece (0,0) -> (0.1,0.4) -> (0.5,0.6): sample it by t and evaluate the curve at its x
    xs, ys = 2 * t * (1 - t) * 0.1 + t ** 2 * 0.5, 2 * t * (1 - t) * 0.4 + t ** 2 * 0.6
    torch.testing.assert_close(bezier_curve(xs, points), ys)
    xs2 = (1 - t) ** 2 * 0.5 + 2 * t * (1 - t) * 0.8 + t ** 2
    ys2 = (1 - t) ** 2 * 0.6 + 2 * t * (1 - t) * 0.9 + t ** 2
    torch.testing.assert_close(bezier_curve(xs2, points), ys2)


def scenes(seed=0, classes=4, size=24):
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(2, size, size, dtype=torch.long)
    for n in range(2):
        for c in range(1, classes):
            y, x = torch.randint(0, size - 8, (2,), generator=g).tolist()
            labels[n, y:y + 8, x:x + 6] = c
    labels[1, :, :3] = 255
    predicted = labels.where(labels != 255, 0).roll(shifts=(1, 2), dims=(1, 2))
    return labels, predicted


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_miou_surrogate_on_one_hot_input_is_the_exact_metric_for_any_curves(seed):
    labels, predicted = scenes(seed)
    target, valid = one_hot_with_ignore(labels, 4)
    one_hot = torch.nn.functional.one_hot(predicted, 4).permute(0, 3, 1, 2).float()
    exact = exact_miou_all_classes(predicted, labels, 4)
    for points in (random_points("mIoU", seed), torch.tensor(OFFICIAL_MIOU_CONTROL_POINTS)):
        assert float(miou_surrogate(one_hot, target, valid, points)) == pytest.approx(exact, abs=1e-6)


def scipy_bf1(predicted: np.ndarray, labels: np.ndarray, classes: int, tolerance: int) -> float:
    """BF1 as the official surrogate defines it, with SciPy morphology: edges by 3x3 erosion
    (border value 1), tolerance by a (2 tol + 1) square dilation, P/R over the batch per class."""
    square = np.ones((3, 3), bool)
    band = np.ones((2 * tolerance + 1, 2 * tolerance + 1), bool)
    f1s = []
    for c in range(classes):
        pred_edge = np.stack([m & ~ndimage.binary_erosion(m, square, border_value=1) for m in predicted == c])
        true_edge = np.stack([m & ~ndimage.binary_erosion(m, square, border_value=1) for m in labels == c])
        if true_edge.sum() == 0:
            continue
        pred_band = np.stack([ndimage.binary_dilation(e, band) for e in pred_edge])
        true_band = np.stack([ndimage.binary_dilation(e, band) for e in true_edge])
        p = (pred_edge & true_band).sum() / (pred_edge.sum() + 1e-8)
        r = (pred_band & true_edge).sum() / (true_edge.sum() + 1e-8)
        f1s.append(2 * p * r / (p + r + 1e-8))
    return float(np.mean(f1s))


@pytest.mark.parametrize("seed, tolerance", [(0, 1), (1, 2), (2, 0)])
def test_bf1_surrogate_on_one_hot_input_agrees_with_scipy_morphology(seed, tolerance):
    labels, predicted = scenes(seed)
    target, _ = one_hot_with_ignore(labels, 4)
    one_hot = torch.nn.functional.one_hot(predicted, 4).permute(0, 3, 1, 2).float()
    expected = scipy_bf1(predicted.numpy(), labels.numpy(), 4, tolerance)
    for points in (random_points("BF1", seed), torch.tensor(OFFICIAL_BF1_CONTROL_POINTS)):
        assert float(bf1_surrogate(one_hot, target, points, tolerance)) == pytest.approx(expected, abs=1e-5)


def test_ignored_pixels_do_not_move_the_miou_loss_but_do_move_bf1():
    labels, _ = scenes(3)
    logits = torch.randn(2, 4, 24, 24, generator=torch.Generator().manual_seed(5), requires_grad=True)
    points = torch.tensor(OFFICIAL_MIOU_CONTROL_POINTS)
    auto_seg_loss(logits, labels, points, "mIoU").backward()
    assert float(logits.grad[1, :, :, :3].abs().sum()) == 0 and float(logits.grad.abs().sum()) > 0
    logits.grad = None
    auto_seg_loss(logits, labels, OFFICIAL_BF1_CONTROL_POINTS, "BF1", tolerance=1).backward()
    assert float(logits.grad[1, :, :, :3].abs().sum()) > 0          # BF1 has no ignore mask


def test_losses_lie_in_zero_one_and_are_zero_for_a_perfect_confident_prediction():
    labels, _ = scenes(4)
    clean = labels.where(labels != 255, 0)
    perfect = torch.nn.functional.one_hot(clean, 4).permute(0, 3, 1, 2).float() * 50
    for metric in ("mIoU", "BF1"):
        points = random_points(metric, 1)
        assert float(auto_seg_loss(perfect, clean, points, metric, tolerance=1)) == pytest.approx(0, abs=1e-5)
        value = float(auto_seg_loss(torch.randn(2, 4, 24, 24), labels, points, metric, tolerance=1))
        assert 0 <= value <= 1


def test_gradients_are_finite_everywhere_including_probabilities_at_segment_joints():
    points = torch.tensor(OFFICIAL_MIOU_CONTROL_POINTS)
    x = torch.cat([torch.tensor([0.0, 5.7e-4, 0.339, 0.625, 1.0]), torch.rand(50)]).requires_grad_()
    bezier_curve(x, points[:6]).sum().backward()
    assert bool(torch.isfinite(x.grad).all())

