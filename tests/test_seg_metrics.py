"""kit.eval.seg_metrics: mIoU with an ignore label, boundary F-score and boundary IoU.

BF1 and boundary IoU are checked against brute-force loops written from the definitions (exact
agreement), the inner band against scipy's binary erosion (the official cv2 erosion), mIoU with
ignore against a hand count; then the invariants and the empty cases the docstring defines.
"""
import itertools
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from kit.data.seg_scenes import IGNORE_INDEX as DATA_IGNORE_INDEX
from kit.eval.seg_metrics import (IGNORE_INDEX, boundary_f1, boundary_f1_per_image, boundary_iou,
                                  boundary_iou_per_class, confusion_ignoring, inner_band, iou_per_class_ignoring,
                                  label_boundaries, miou_ignoring, width_from_ratio)
from kit.eval.segmentation import confusion_matrix, mean_iou


def random_maps(seed, batch=3, size=(11, 13), num_labels=4, ignore_fraction=0.1, blocky=True):
    """Random (B, H, W) prediction and target maps, the target with some 255 pixels."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    def draw():
        if blocky:  # regions a few pixels wide, so boundaries are not everywhere
            coarse = torch.randint(0, num_labels, (batch, 1, h // 3 + 1, w // 3 + 1), generator=g).float()
            return torch.nn.functional.interpolate(coarse, scale_factor=3, mode="nearest")[:, 0, :h, :w].long()
        return torch.randint(0, num_labels, (batch, h, w), generator=g)
    predicted, target = draw(), draw()
    target[torch.rand(target.shape, generator=g) < ignore_fraction] = 255
    return predicted, target


# --------------------------------------------------------------------------- brute-force references

def neighbours4(r, c, h, w):
    return [(r + dr, c + dc) for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)) if 0 <= r + dr < h and 0 <= c + dc < w]


def boundary_pixels(labels):
    h, w = labels.shape
    return {(r, c) for r in range(h) for c in range(w)
            if any(labels[n] != labels[r, c] for n in neighbours4(r, c, h, w))}


def within(point, points, tolerance):
    return any((point[0] - q[0]) ** 2 + (point[1] - q[1]) ** 2 <= tolerance ** 2 for q in points)


def bf1_reference(predicted, target, num_labels, tolerance, ignore_index=255):
    predicted, target = predicted.numpy(), target.numpy()
    scores = np.full((len(target), num_labels), np.nan)
    for b in range(len(target)):
        p, t = predicted[b], target[b]
        h, w = t.shape
        pixels = list(itertools.product(range(h), range(w)))
        ignored = {q for q in pixels if t[q] == ignore_index}
        in_target = {int(t[q]) for q in pixels if q not in ignored}
        in_predicted = {int(p[q]) for q in pixels if q not in ignored}
        counted = in_target | in_predicted
        p_edges, t_edges = boundary_pixels(p), boundary_pixels(t)
        for c in counted:
            class_pixels = [q for q in pixels if t[q] == c]
            gt = [q for q in t_edges if t[q] == c]
            pr = [q for q in p_edges if p[q] == c and (q not in ignored or within(q, class_pixels, tolerance))]
            if not gt and not pr:
                scores[b, c] = 1.0 if c in in_target and c in in_predicted else 0.0
            elif not gt or not pr:
                scores[b, c] = 0.0
            else:
                precision = sum(within(q, gt, tolerance) for q in pr) / len(pr)
                recall = sum(within(q, pr, tolerance) for q in gt) / len(gt)
                scores[b, c] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return torch.from_numpy(scores)


def band_reference(mask, width):
    """Mask pixels with a non-mask pixel or the outside within chessboard distance ``width``."""
    h, w = mask.shape
    band = np.zeros_like(mask)
    for r, c in zip(*np.nonzero(mask)):
        window = [(r + dr, c + dc) for dr in range(-width, width + 1) for dc in range(-width, width + 1)]
        band[r, c] = any(not (0 <= a < h and 0 <= b < w) or not mask[a, b] for a, b in window)
    return band


def biou_reference(predicted, target, num_labels, width, ignore_index=255):
    predicted, target = predicted.numpy(), target.numpy()
    scores = torch.full((num_labels,), float("nan"), dtype=torch.float64)
    for c in range(num_labels):
        inter = union = 0
        for b in range(len(target)):
            valid = target[b] != ignore_index
            tb = band_reference(target[b] == c, width) & valid
            pb = band_reference(predicted[b] == c, width) & valid
            inter, union = inter + int((tb & pb).sum()), union + int((tb | pb).sum())
        if union:
            scores[c] = inter / union
    return scores


# --------------------------------------------------------------------------- agreement

@pytest.mark.parametrize("seed, tolerance, blocky", [(0, 0, True), (1, 1, True), (2, 1.5, True), (3, 2, True),
                                                    (4, 3, True), (5, 1, False)])
def test_bf1_equals_the_brute_force_reference(seed, tolerance, blocky):
    predicted, target = random_maps(seed, blocky=blocky)
    expected = bf1_reference(predicted, target, 4, tolerance)
    got = boundary_f1_per_image(predicted, target, 4, tolerance)
    assert torch.equal(got.isnan(), expected.isnan())
    assert torch.equal(got.nan_to_num(-1), expected.nan_to_num(-1))  # exact
    assert boundary_f1(predicted, target, 4, tolerance) == pytest.approx(float(expected.nanmean(1).mean()), abs=1e-12)


@pytest.mark.parametrize("seed, width", [(0, 1), (1, 2), (2, 3)])
def test_boundary_iou_equals_the_brute_force_reference(seed, width):
    predicted, target = random_maps(seed, size=(10, 12))
    expected = biou_reference(predicted, target, 4, width)
    got = boundary_iou_per_class(predicted, target, 4, width)
    assert torch.equal(got.nan_to_num(-1), expected.nan_to_num(-1))  # exact
    assert boundary_iou(predicted, target, 4, width) == pytest.approx(float(expected.nanmean()), abs=1e-12)


@pytest.mark.parametrize("width", [1, 2, 4])
def test_inner_band_is_the_official_erosion_with_a_zero_border(width):
    g = torch.Generator().manual_seed(width)
    masks = torch.nn.functional.interpolate(torch.rand(4, 1, 5, 6, generator=g), scale_factor=3)[:, 0] > 0.4
    for mask, band in zip(masks, inner_band(masks, width)):
        # cv2.erode(pad(mask, 1, 0), 3x3, iterations=width) == scipy's erosion with border 0
        eroded = ndimage.binary_erosion(mask.numpy(), structure=np.ones((3, 3)), iterations=width, border_value=0)
        assert np.array_equal(band.numpy(), mask.numpy() & ~eroded)
        assert np.array_equal(band.numpy(), band_reference(mask.numpy(), width))


def test_label_boundaries_are_4_neighbour_label_changes():
    labels, _ = random_maps(7, batch=2, blocky=False)
    for b in range(2):
        expected = boundary_pixels(labels[b].numpy())
        got = {tuple(map(int, q)) for q in torch.nonzero(label_boundaries(labels)[b])}
        assert got == expected


# --------------------------------------------------------------------------- mIoU with ignore

def test_miou_ignoring_by_hand():
    target = torch.tensor([[0, 0, 1, 255], [1, 2, 255, 2]])
    predicted = torch.tensor([[0, 1, 1, 2], [1, 2, 0, 0]])
    # kept pixels (target, predicted): (0,0) (0,1) (1,1) (1,1) (2,2) (2,0)
    # IoU: class 0: 1 / (2 + 2 - 1) = 1/3; class 1: 2 / (2 + 3 - 2) = 2/3; class 2: 1 / (2 + 1 - 1) = 1/2
    iou = iou_per_class_ignoring(predicted, target, 4)
    assert torch.allclose(iou[:3], torch.tensor([1 / 3, 2 / 3, 1 / 2], dtype=torch.float64)) and math.isnan(iou[3])
    assert miou_ignoring(predicted, target, 4) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3, abs=1e-12)
    confusion = confusion_ignoring(predicted, target, 4)
    assert confusion.sum() == 6 and torch.equal(confusion, confusion_matrix(
        torch.tensor([0, 1, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2]), 4))


def test_confusions_of_batches_sum_to_the_dataset_miou():
    predicted, target = random_maps(8, batch=6)
    summed = confusion_ignoring(predicted[:2], target[:2], 4) + confusion_ignoring(predicted[2:], target[2:], 4)
    assert mean_iou(summed) == miou_ignoring(predicted, target, 4)


# --------------------------------------------------------------------------- invariants and empty cases

def test_a_perfect_prediction_scores_one_whatever_it_says_on_ignored_pixels():
    predicted, target = random_maps(9, batch=4, ignore_fraction=0.0)
    target = target.clone()
    target[:, 4:6, :] = 255  # an ignored band: the prediction there is not scored
    exact = torch.where(target == 255, predicted, target)
    assert miou_ignoring(exact, target, 4) == 1.0
    assert boundary_f1(exact, target, 4, tolerance=2) == 1.0
    assert boundary_iou(exact, target, 4, width=2) == 1.0
    clean, _ = random_maps(10, batch=2, ignore_fraction=0.0)
    assert boundary_f1(clean, clean, 4, tolerance=0) == 1.0 and boundary_iou(clean, clean, 4, width=1) == 1.0


def test_a_one_pixel_shift_is_forgiven_by_a_tolerance_of_one_only():
    target = torch.zeros(1, 16, 16, dtype=torch.long)
    target[0, 4:12, 4:12] = 1
    shifted = torch.roll(target, 1, dims=2)
    assert boundary_f1(shifted, target, 2, tolerance=1) == 1.0
    assert boundary_f1(shifted, target, 2, tolerance=0) < 1.0
    assert boundary_iou(shifted, target, 2, width=1) < 1.0


def test_empty_cases_are_defined():
    uniform = torch.ones(2, 8, 8, dtype=torch.long)
    # one class filling the image in both: no boundary on either side -> F1 1
    assert boundary_f1_per_image(uniform, uniform, 3).nan_to_num(-1).tolist() == [[-1, 1.0, -1]] * 2
    # the class fills the target but the prediction has boundaries -> 0 for both classes counted
    split = uniform.clone()
    split[:, :, :4] = 2
    assert boundary_f1_per_image(split, uniform, 3)[0].nan_to_num(-1).tolist() == [-1, 0.0, 0.0]
    # one class predicted everywhere, absent from the target: 0 for it (and for the target's classes)
    assert boundary_f1_per_image(torch.full((1, 8, 8), 2), uniform[:1], 3)[0].nan_to_num(-1).tolist() == [-1, 0.0, 0.0]
    # every target pixel ignored: nothing counted, BF1 and boundary IoU are NaN
    ignored = torch.full((1, 8, 8), 255)
    assert math.isnan(boundary_f1(uniform[:1], ignored, 3)) and math.isnan(boundary_iou(uniform[:1], ignored, 3))
    assert math.isnan(miou_ignoring(uniform[:1], ignored, 3))
    # a whole-image class still has a band at the image border (the official padding)
    assert boundary_iou_per_class(uniform, uniform, 3, width=1).nan_to_num(-1).tolist() == [-1, 1.0, -1]
    # ignore_index=None: 255 is not allowed in the target, every pixel counts
    assert boundary_f1(split, uniform, 3, ignore_index=None) == 0.0


def test_a_predicted_object_inside_an_unlabeled_region_costs_nothing():
    target = torch.zeros(1, 20, 20, dtype=torch.long)
    target[0, 5:15, 5:15] = 255  # a void object
    predicted = torch.zeros_like(target)
    predicted[0, 6:14, 6:14] = 1  # the model calls it class 1
    # background: the predicted edge lies 1 px inside the void, its corners sqrt(2) px from the target's
    assert boundary_f1(predicted, target, 2, tolerance=1.5) == 1.0
    assert boundary_f1(predicted, target, 2, tolerance=1) < 1.0
    assert miou_ignoring(predicted, target, 2) == 1.0
    # the same prediction where the target says background is penalised
    assert boundary_f1(predicted, torch.zeros_like(target), 2, tolerance=1.5) < 1.0


def test_a_thin_ignore_band_is_judged_against_the_edges_on_both_sides():
    banded = torch.zeros(1, 20, 20, dtype=torch.long)
    banded[0, 4:16, 4:16] = 255
    banded[0, 6:14, 6:14] = 1  # an 8x8 square of class 1 in a 2 px ignore ring
    square = torch.zeros_like(banded)
    square[0, 5:15, 5:15] = 1  # the prediction's edge runs through the middle of the ring
    assert boundary_f1(square, banded, 2, tolerance=1.5) == 1.0
    assert boundary_f1(square, banded, 2, tolerance=0) < 1.0
    assert boundary_iou(square, banded, 2, width=1) < 1.0  # bands: the prediction's lies in the ring (ignored)


def test_width_from_ratio_and_the_shared_ignore_label():
    assert width_from_ratio(64, 64) == 2 and width_from_ratio(10, 10) == 1 and width_from_ratio(1024, 2048) == 46
    assert IGNORE_INDEX == DATA_IGNORE_INDEX == 255
