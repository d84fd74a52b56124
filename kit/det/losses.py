"""Detection losses: focal loss (on logits and on probabilities), quality focal loss, GIoU.

* Sigmoid focal loss on logits (Lin et al. 2017) is :func:`torchvision.ops.sigmoid_focal_loss`.
* TOOD's head outputs *probabilities* (its score is a geometric mean of two sigmoids), so its
  losses take probabilities: :func:`focal_loss_prob` (the warm-up loss, mmdetection's
  ``FocalLossWithProb``) and :func:`quality_focal_loss_prob` (Li et al. 2020, GFL, in its
  probability form, TOOD's ``TaskAlignedFocalLoss``). Feeding probabilities to a
  with-logits loss would apply the sigmoid twice.
* GIoU loss is :func:`torchvision.ops.generalized_box_iou_loss`.

All return per-element losses (no reduction); callers weight, sum and normalise. They run in
float32 even under autocast (``binary_cross_entropy`` on probabilities is not autocast-safe).
Inputs are checked: probabilities in [0, 1] (:func:`kit.det.validation.check_probs`), one
label / quality / target row per prediction, GIoU targets finite with ``x2 >= x1``, ``y2 >= y1``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from kit.det.validation import check_gt_boxes, check_probs

__all__ = ["sigmoid_focal_loss", "focal_loss_prob", "quality_focal_loss_prob", "giou_loss", "one_hot"]


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N,) labels with -1 for background -> (N, C) float one-hot (background rows all zero)."""
    if labels.numel() and (labels.max() >= num_classes or labels.min() < -1):
        raise ValueError(f"labels must lie in [-1, {num_classes}), got min {labels.min()} max {labels.max()}")
    target = torch.zeros((labels.shape[0], num_classes + 1), device=labels.device)
    target[torch.arange(labels.shape[0], device=labels.device), labels.clamp(min=-1)] = 1.0  # -1 -> last
    return target[:, :num_classes]


def _check_rows(name: str, tensor: torch.Tensor, shape: tuple) -> None:
    """One row per prediction: a mismatch would broadcast or index into a finite, wrong loss."""
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, one row per prediction, got {tuple(tensor.shape)}")


@torch.autocast("cuda", enabled=False)
def focal_loss_prob(probs: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                    gamma: float = 2.0) -> torch.Tensor:
    """Focal loss on probabilities: ``alpha_t * |t - p|^gamma * BCE(p, t)``, element-wise.

    probs, targets: (N, C), targets one-hot (or soft) in [0, 1].
    """
    check_probs(probs, "probs")
    _check_rows("targets", targets, probs.shape)
    probs, targets = probs.float(), targets.float()
    p_t_complement = (targets - probs).abs()
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return F.binary_cross_entropy(probs, targets, reduction="none") * alpha_t * p_t_complement.pow(gamma)


@torch.autocast("cuda", enabled=False)
def quality_focal_loss_prob(probs: torch.Tensor, labels: torch.Tensor, quality: torch.Tensor,
                            beta: float = 2.0) -> torch.Tensor:
    """Quality focal loss on probabilities, element-wise (N, C).

    probs: (N, C); labels: (N,) class of each positive, -1 for negatives; quality: (N,) soft
    target for the positive's class (TOOD: the normalised alignment ``t_hat``). Negatives and
    the other classes of positives are pushed to 0 with weight ``p^beta``; the labelled class
    of a positive is pulled to its quality with weight ``|quality - p|^beta``.
    """
    if probs.dim() != 2:
        raise ValueError(f"probs must be (N, C), got {tuple(probs.shape)}")
    check_probs(probs, "probs")
    _check_rows("labels", labels, probs.shape[:1])
    _check_rows("quality", quality, probs.shape[:1])
    if labels.numel() and (labels.min() < -1 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must lie in [-1, {probs.shape[1]}) (-1 = negative), "
                         f"got min {int(labels.min())} max {int(labels.max())}")
    probs, quality = probs.float(), quality.float()
    loss = F.binary_cross_entropy(probs, torch.zeros_like(probs), reduction="none") * probs.pow(beta)
    positive = torch.nonzero(labels >= 0).flatten()
    if positive.numel():
        cls = labels[positive]
        p = probs[positive, cls]
        q = quality[positive]
        loss[positive, cls] = F.binary_cross_entropy(p, q, reduction="none") * (q - p).abs().pow(beta)
    return loss


@torch.autocast("cuda", enabled=False)
def giou_loss(pred_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
    """1 - GIoU for matched box pairs (N, 4) xyxy -> (N,), torchvision's definition.

    Targets are ground truth: they must be finite with ``x2 >= x1`` and ``y2 >= y1``
    (ValueError otherwise). Predictions are *not* refused when inverted, because training
    produces such boxes legitimately: TOOD reads each side of its box at its own learned
    offset (:func:`kit.det.tood.align_boxes`), so a resampled ``y1`` can pass ``y2`` (it
    happens in P01's TOOD run). What torchvision's formula does with them:

    * inverted on **one** axis, the box has a negative area ``w * h``, so the union is below
      the target's area and the loss is >= 1, growing with the inversion: a fair penalty whose
      gradient undoes the inversion. Kept as it is (P01's numbers depend on it).
    * inverted on **both** axes, ``w * h`` is positive again: the box counts as a real box in
      the union, and over its target it scores loss 0, a perfect score. Such a box is first
      collapsed onto its centre (a degenerate box: loss >= 1, the gradient moves the centre).

    Every other prediction passes through ``torch.where`` unchanged, so its loss and gradient
    are bit-identical to the plain torchvision call.
    """
    _check_rows("target_boxes", target_boxes, pred_boxes.shape)
    if pred_boxes.dim() != 2 or pred_boxes.shape[-1] != 4:
        raise ValueError(f"pred_boxes must be (N, 4) xyxy, got {tuple(pred_boxes.shape)}")
    check_gt_boxes(target_boxes, name="target_boxes")
    pred, target = pred_boxes.float(), target_boxes.float()
    low, high = pred[:, :2], pred[:, 2:]  # (N, 2) as (x, y)
    keep = ~(high < low).all(dim=1, keepdim=True)  # (N, 1): False only when inverted on both axes
    centre = (low + high) / 2
    pred = torch.cat([torch.where(keep, low, centre), torch.where(keep, high, centre)], dim=1)
    return generalized_box_iou_loss(pred, target, reduction="none")
