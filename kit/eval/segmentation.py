"""Semantic segmentation on shape scenes: per-pixel targets and mean IoU.

``semantic_targets`` turns the instance masks of a :class:`kit.data.shapes.ShapeScenes` into a
class map per image (0 = background, class ``c`` -> ``c + 1``; visible masks never overlap).
``mean_iou`` is the standard mIoU (as mmsegmentation's ``IoUMetric``): one confusion matrix
accumulated over the whole dataset (not per image), per class true positives over (predicted +
actual - true positives), averaged over the classes that occur in the predictions or the
targets (a class absent from both has no IoU and is left out; one predicted but absent counts 0).
Every page that reports "mIoU" uses it (P38, P41).
"""
from __future__ import annotations

import torch

__all__ = ["semantic_targets", "confusion_matrix", "iou_per_class", "mean_iou"]


def semantic_targets(scenes, indices, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Float images (B, 3, H, W) in [0, 1] and class maps (B, H, W) long, 0 = background."""
    indices = torch.as_tensor(indices, dtype=torch.long, device=scenes.images.device)
    masks, labels = scenes.masks[indices], scenes.labels[indices]  # (B, K, H, W), (B, K)
    # visible masks are disjoint, so a sum of (label + 1) * mask is the class map
    classes = (masks.long() * (labels + 1).clamp(min=0)[..., None, None]).sum(1)  # (B, H, W)
    images = scenes.images[indices].float().div_(255)
    return images.to(device), classes.to(device)


def confusion_matrix(predicted: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts, rows = target class, columns = predicted class."""
    if predicted.shape != target.shape:
        raise ValueError(f"predicted {tuple(predicted.shape)} and target {tuple(target.shape)} must match")
    for name, tensor in (("predicted", predicted), ("target", target)):
        if tensor.is_floating_point() or tensor.is_complex():  # .long() would truncate (and NaN -> garbage)
            raise TypeError(f"{name} must hold integer class ids (e.g. logits.argmax(1)), got {tensor.dtype}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if target.numel() and (target.min() < 0 or target.max() >= num_classes or predicted.min() < 0
                           or predicted.max() >= num_classes):
        raise ValueError(f"class ids must lie in [0, {num_classes})")
    flat = target.flatten().long() * num_classes + predicted.flatten().long()
    return torch.bincount(flat, minlength=num_classes ** 2).view(num_classes, num_classes)


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """(C,) IoU per class; NaN for a class absent from both prediction and target."""
    if confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square (C, C) matrix of counts, got {tuple(confusion.shape)}")
    if confusion.numel() and not (confusion >= 0).all():  # also catches NaN
        raise ValueError("confusion must hold counts >= 0 (see confusion_matrix); got negative or NaN entries")
    confusion = confusion.double()
    true_positive = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    return torch.where(union > 0, true_positive / union.clamp(min=1), torch.full_like(union, float("nan")))


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean of :func:`iou_per_class` over the classes that occur."""
    return float(iou_per_class(confusion).nanmean())
