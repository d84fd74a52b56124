"""Segmentation metrics with an ignore label: dataset mIoU, boundary F-score and boundary IoU.

- **mIoU with ignore** (:func:`miou_ignoring`): pixels whose target is ``ignore_index`` (255, as
  Cityscapes' ``ignoreInId`` and VOC's border) are dropped, then the kit's one mIoU
  (:mod:`kit.eval.segmentation`: one confusion matrix over the whole dataset) does the rest.
- **Boundary F-score** (BF1, Csurka, Larlus & Perronnin, BMVC 2013; MATLAB's ``bfscore``): per
  image and class, the boundary pixels of the class in the prediction and in the target; a
  predicted boundary pixel is a hit when a target boundary pixel of the class lies within
  ``tolerance`` pixels (Euclidean, ``<=``), and the other way round for recall; F1 = 2PR/(P+R).
  The image's score is the mean over the classes it counts, the dataset's the mean over images.
- **Boundary IoU** (Cheng, Girshick, Dollár, Berg & Kirillov, CVPR 2021): the IoU of the masks'
  *inner bands*, the pixels of a mask within ``width`` pixels of its contour; per class, with the
  intersections and unions summed over the dataset as mIoU sums its confusion matrix.

Choices, and where they come from:

- A boundary pixel (BF1) is a pixel with a 4-neighbour of another label: boundaries are class
  label changes, so the image border is no boundary, and a class pixel next to an ignored
  (255) pixel *is* a target boundary pixel (the true edge lies inside the ignored band).
- The inner band (boundary IoU) follows the official ``mask_to_boundary``
  (``bowenc0221/boundary-iou-api``): the mask minus its erosion by ``width`` iterations of a 3x3
  square (chessboard distance), the image padded with non-mask, so a mask cut by the border has
  a band there. ``width_from_ratio`` is the official ``dilation_ratio`` (0.02 of the diagonal).
- Ignored pixels: boundary IoU leaves them out of both the intersection and the union. BF1
  judges a predicted boundary pixel of class ``c`` on an ignored pixel only when the target has
  class ``c`` within ``tolerance`` (inside a thin ignore band around a ``c`` object); deeper in an
  unlabeled region the target says nothing about ``c``, and the pixel is left out. (Auto
  Seg-Loss' BF1 applies no ignore mask at all; with ``ignore_index=None`` this one does not either.)
- Empty cases. BF1 counts class ``c`` in an image when ``c`` occurs at a non-ignored pixel of the
  target or the prediction; with no boundary pixel on either side its F1 is 1 when it occurs in
  both (it fills the image in both) and 0 when it occurs in one only (one class predicted
  everywhere scores 0, not 1); with boundary pixels on one side only it is 0; an image that counts no
  class (every pixel ignored) is left out of the mean, and a dataset of such images scores NaN.
  Boundary IoU of a class whose bands are empty in both is NaN and left out of the mean, as
  :func:`kit.eval.segmentation.iou_per_class` does.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from kit.eval.segmentation import confusion_matrix, iou_per_class, mean_iou

__all__ = ["IGNORE_INDEX", "confusion_ignoring", "miou_ignoring", "iou_per_class_ignoring", "label_boundaries",
           "boundary_f1_per_image", "boundary_f1", "inner_band", "width_from_ratio", "boundary_iou_per_class",
           "boundary_iou"]

IGNORE_INDEX = 255  # kit.data.seg_scenes.IGNORE_INDEX (not imported: metrics need not load a generator)


def check_label_maps(predicted, target, num_labels, ignore_index) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer class maps (B, H, W) (one (H, W) map is taken as B = 1), on the CPU, checked."""
    for name, tensor in (("predicted", predicted), ("target", target)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of class ids, got {type(tensor).__name__}")
        if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer class ids (e.g. logits.argmax(1)), got {tensor.dtype}")
    if predicted.shape != target.shape or predicted.dim() not in (2, 3):
        raise ValueError(f"predicted {tuple(predicted.shape)} and target {tuple(target.shape)} must be equal "
                         "(B, H, W) or (H, W) class maps")
    if isinstance(num_labels, bool) or not isinstance(num_labels, int):
        raise TypeError(f"num_labels (background included) must be an int, got {type(num_labels).__name__}")
    if num_labels < 1:
        raise ValueError(f"num_labels (background included) must be >= 1, got {num_labels}")
    if ignore_index is not None and 0 <= ignore_index < num_labels:
        raise ValueError(f"ignore_index {ignore_index} is a label id (num_labels={num_labels}); use one outside")
    predicted, target = predicted.long().cpu(), target.long().cpu()
    if predicted.dim() == 2:
        predicted, target = predicted[None], target[None]
    if predicted.numel() and (predicted.min() < 0 or predicted.max() >= num_labels):
        raise ValueError(f"predicted ids must lie in [0, {num_labels}), "
                         f"got [{int(predicted.min())}, {int(predicted.max())}]")
    valid = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    if valid.any() and (target[valid].min() < 0 or target[valid].max() >= num_labels):
        raise ValueError(f"target ids must lie in [0, {num_labels}) or be ignore_index={ignore_index}")
    return predicted, target


# --------------------------------------------------------------------------- mIoU


def confusion_ignoring(predicted, target, num_labels: int, ignore_index: int | None = IGNORE_INDEX) -> torch.Tensor:
    """(C, C) confusion (rows = target) over the pixels whose target is not ``ignore_index``.

    Sum it over batches and pass it to :func:`kit.eval.segmentation.mean_iou` for a dataset mIoU.
    """
    predicted, target = check_label_maps(predicted, target, num_labels, ignore_index)
    keep = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    return confusion_matrix(predicted[keep], target[keep], num_labels)


def miou_ignoring(predicted, target, num_labels: int, ignore_index: int | None = IGNORE_INDEX) -> float:
    """Dataset mIoU of class maps (B, H, W) with the ignored pixels dropped."""
    return mean_iou(confusion_ignoring(predicted, target, num_labels, ignore_index))


def iou_per_class_ignoring(predicted, target, num_labels: int, ignore_index: int | None = IGNORE_INDEX) -> torch.Tensor:
    """(C,) IoU per label with the ignored pixels dropped; NaN for a label absent from both."""
    return iou_per_class(confusion_ignoring(predicted, target, num_labels, ignore_index))


# --------------------------------------------------------------------------- boundary F-score


def label_boundaries(labels: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: pixels with a 4-neighbour of another label (the image border is none)."""
    boundary = torch.zeros_like(labels, dtype=torch.bool)
    vertical = labels[:, 1:, :] != labels[:, :-1, :]  # (B, H-1, W): pixel and the one below differ
    horizontal = labels[:, :, 1:] != labels[:, :, :-1]  # (B, H, W-1)
    boundary[:, 1:, :] |= vertical
    boundary[:, :-1, :] |= vertical
    boundary[:, :, 1:] |= horizontal
    boundary[:, :, :-1] |= horizontal
    return boundary


def distance_to(points: np.ndarray) -> np.ndarray:
    """(H, W) Euclidean distance of every pixel to the nearest True pixel of ``points`` (inf if none)."""
    if not points.any():
        return np.full(points.shape, np.inf)
    return ndimage.distance_transform_edt(~points)


def class_boundary_f1(predicted_edge, target_edge, tolerance: float, in_both: bool) -> float:
    """F1 of two boundary pixel sets (H, W) bool, matched within ``tolerance`` pixels.

    ``in_both``: the class occurs in the target and the prediction; with no boundary on either
    side that means it fills the image in both (1), else it fills one and is absent from the other (0).
    """
    num_predicted, num_target = int(predicted_edge.sum()), int(target_edge.sum())
    if num_predicted == 0 and num_target == 0:
        return 1.0 if in_both else 0.0
    if num_predicted == 0 or num_target == 0:
        return 0.0
    precision = float((distance_to(target_edge)[predicted_edge] <= tolerance).mean())
    recall = float((distance_to(predicted_edge)[target_edge] <= tolerance).mean())
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def boundary_f1_per_image(predicted, target, num_labels: int, tolerance: float = 2.0,
                          ignore_index: int | None = IGNORE_INDEX) -> torch.Tensor:
    """(B, C) float64 BF1 per image and class; NaN where the image does not count the class."""
    predicted, target = check_label_maps(predicted, target, num_labels, ignore_index)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not math.isfinite(tolerance) \
            or tolerance < 0:
        raise ValueError(f"tolerance must be a finite number of pixels >= 0, got {tolerance!r}")
    predicted_edges = label_boundaries(predicted).numpy()
    target_edges = label_boundaries(target).numpy()
    predicted, target = predicted.numpy(), target.numpy()
    scores = np.full((len(target), num_labels), np.nan)
    for b in range(len(target)):
        ignored = target[b] == ignore_index if ignore_index is not None else np.zeros(target[b].shape, bool)
        in_target, in_predicted = set(np.unique(target[b][~ignored])), set(np.unique(predicted[b][~ignored]))
        for c in in_target | in_predicted:
            of_class = target[b] == c
            # an ignored pixel is judged only where the target has class c within the tolerance
            judged = ~ignored | (distance_to(of_class) <= tolerance)
            predicted_edge = predicted_edges[b] & (predicted[b] == c) & judged
            scores[b, c] = class_boundary_f1(predicted_edge, target_edges[b] & of_class, tolerance,
                                             c in in_target and c in in_predicted)
    return torch.from_numpy(scores)


def boundary_f1(predicted, target, num_labels: int, tolerance: float = 2.0,
                ignore_index: int | None = IGNORE_INDEX) -> float:
    """Dataset BF1: per image the mean over its counted classes, then the mean over images."""
    per_image = boundary_f1_per_image(predicted, target, num_labels, tolerance, ignore_index)
    counted = ~per_image.isnan().all(1)
    return float(per_image[counted].nanmean(1).mean()) if counted.any() else float("nan")


# --------------------------------------------------------------------------- boundary IoU


def width_from_ratio(height: int, width: int, dilation_ratio: float = 0.02) -> int:
    """The official band width: ``max(1, round(dilation_ratio * image diagonal))`` pixels."""
    return max(1, int(round(dilation_ratio * math.hypot(height, width))))


def inner_band(masks: torch.Tensor, width: int) -> torch.Tensor:
    """(B, H, W) bool: mask pixels within ``width`` px (chessboard) of a non-mask pixel or the border.

    The mask minus its erosion by a (2 width + 1)^2 square, with the outside taken as non-mask.
    """
    outside = F.pad((~masks)[:, None].float(), (width,) * 4, value=1.0)  # (B, 1, H + 2w, W + 2w)
    near_outside = F.max_pool2d(outside, 2 * width + 1, stride=1)[:, 0] > 0  # (B, H, W)
    return masks & near_outside


def boundary_iou_per_class(predicted, target, num_labels: int, width: int = 2,
                           ignore_index: int | None = IGNORE_INDEX) -> torch.Tensor:
    """(C,) float64 boundary IoU per class over the dataset; NaN for a class without bands."""
    predicted, target = check_label_maps(predicted, target, num_labels, ignore_index)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be an int >= 1 (pixels), got {width!r}")
    valid = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    scores = torch.full((num_labels,), float("nan"), dtype=torch.float64)
    for c in range(num_labels):
        target_band = inner_band(target == c, width) & valid  # (B, H, W)
        predicted_band = inner_band(predicted == c, width) & valid
        union = int((target_band | predicted_band).sum())
        if union:
            scores[c] = int((target_band & predicted_band).sum()) / union
    return scores


def boundary_iou(predicted, target, num_labels: int, width: int = 2, ignore_index: int | None = IGNORE_INDEX) -> float:
    """Mean boundary IoU over the classes that have a band in the target or the prediction."""
    return float(boundary_iou_per_class(predicted, target, num_labels, width, ignore_index).nanmean())
