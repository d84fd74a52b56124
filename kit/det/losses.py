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
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

__all__ = ["sigmoid_focal_loss", "focal_loss_prob", "quality_focal_loss_prob", "giou_loss", "one_hot"]


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N,) labels with -1 for background -> (N, C) float one-hot (background rows all zero)."""
    if labels.numel() and (labels.max() >= num_classes or labels.min() < -1):
        raise ValueError(f"labels must lie in [-1, {num_classes}), got min {labels.min()} max {labels.max()}")
    target = torch.zeros((labels.shape[0], num_classes + 1), device=labels.device)
    target[torch.arange(labels.shape[0], device=labels.device), labels.clamp(min=-1)] = 1.0  # -1 -> last
    return target[:, :num_classes]


def _check_probs(probs: torch.Tensor) -> None:
    if probs.numel() and (probs.min() < 0 or probs.max() > 1):
        raise ValueError("expected probabilities in [0, 1]; got values outside (logits passed by mistake?)")


@torch.autocast("cuda", enabled=False)
def focal_loss_prob(probs: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                    gamma: float = 2.0) -> torch.Tensor:
    """Focal loss on probabilities: ``alpha_t * |t - p|^gamma * BCE(p, t)``, element-wise.

    probs, targets: (N, C), targets one-hot (or soft) in [0, 1].
    """
    _check_probs(probs)
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
    _check_probs(probs)
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
    """1 - GIoU for matched box pairs (N, 4) xyxy -> (N,)."""
    return generalized_box_iou_loss(pred_boxes.float(), target_boxes.float(), reduction="none")
