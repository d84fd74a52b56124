r"""Cross-dataset training: one detector from several partially labelled datasets.

Yao et al., "Cross-dataset Training for Class Increasing Object Detection" (arXiv 2001.04621).
Each dataset ``d`` labels its own class set ``C_d``; an image of ``d`` may well show objects of
other classes, but nobody drew their boxes. The scheme:

1. merge the label spaces, duplicated names becoming one class (:func:`merge_label_spaces`);
2. concatenate the datasets, remembering each image's source (:func:`label_mask_for`);
3. train with the **dataset-aware focal loss**: for an image of ``d`` only the classes in
   ``C_d`` count, positive or negative; the others are neither
   (:func:`dataset_aware_focal_loss`):

   .. math:: L = \frac{1}{\max(1, N_{pos})} \sum_a \sum_{c \in C_d} FL(p_{a,c}, y_{a,c})

   with FL :func:`torchvision.ops.sigmoid_focal_loss` (alpha 0.25, gamma 2) and ``N_pos`` the
   number of positive targets.

Naive merging uses the plain focal loss instead, so an unlabelled object of a class that
the image's dataset does not label is pushed to background: the false negatives the paper's
loss removes. No official code was found; the mask follows mmdetection's ``weight`` argument
of the focal loss, the normaliser follows the paper's equation.

The detector is the chapter's ATSS baseline: :func:`dataset_aware_atss_loss` is ATSS's loss
(:func:`kit.det.atss.atss_loss_terms`) with its classification term replaced by this one.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torchvision.ops import sigmoid_focal_loss

from kit.det.atss import atss_loss_terms
from kit.det.detector import DenseOutput
from kit.det.validation import check_probs


def merge_label_spaces(class_names: Sequence[Sequence[str]]):
    """Union of the datasets' class names, duplicates merged (the paper's step 1).

    class_names: one list of names per dataset. Returns ``(merged, index_maps)``: the merged
    names (first-seen order) and, per dataset, a (C_d,) long tensor mapping its local class
    index to the merged one.
    """
    merged: list[str] = []
    for names in class_names:
        if len(set(names)) != len(names):
            raise ValueError(f"a dataset lists a class twice: {list(names)}")
        merged += [n for n in names if n not in merged]
    maps = [torch.tensor([merged.index(n) for n in names], dtype=torch.long) for names in class_names]
    return merged, maps


def label_mask_for(dataset_ids: torch.Tensor, labelled: Sequence[Sequence[int]], num_classes: int) -> torch.Tensor:
    """(B,) dataset index of each image -> (B, C) bool: the classes its dataset labels."""
    table = torch.zeros((len(labelled), num_classes), dtype=torch.bool)
    for d, classes in enumerate(labelled):
        classes = list(classes)
        if not classes or min(classes) < 0 or max(classes) >= num_classes:
            raise ValueError(f"dataset {d}: labelled classes must be a non-empty subset of 0..{num_classes - 1}, got {classes}")
        table[d, classes] = True
    dataset_ids = torch.as_tensor(dataset_ids)
    if dataset_ids.dim() != 1 or (dataset_ids.numel() and (dataset_ids.min() < 0 or dataset_ids.max() >= len(labelled))):
        raise ValueError(f"dataset_ids must be (B,) in 0..{len(labelled) - 1}, got {dataset_ids.tolist()}")
    return table.to(dataset_ids.device)[dataset_ids]


def prior_label_mask(label_mask: torch.Tensor, num_priors: int) -> torch.Tensor:
    """(B, C) per-image mask -> (B * N, C) per-prior mask, rows in the order of ``flatten(0, 1)``."""
    if label_mask.dim() != 2:
        raise ValueError(f"label_mask must be (B, C), got {tuple(label_mask.shape)}")
    return label_mask[:, None, :].expand(-1, num_priors, -1).reshape(-1, label_mask.shape[-1])


def dataset_aware_focal_loss(logits: torch.Tensor, targets: torch.Tensor, label_mask: torch.Tensor,
                             alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """The masked sigmoid focal loss, summed and divided by ``max(1, positive targets)``.

    logits, targets: (N, C) (targets one-hot, background rows all zero); label_mask: bool or
    0/1, broadcastable to (N, C) (e.g. (N, C) per prior, or (C,) for one dataset): True where
    the class counts. Masked entries add exactly nothing (nor gradient). Every positive target
    must lie in a counted class, and targets must lie in [0, 1]. With an all-True mask this is the plain focal loss / N_pos.
    """
    if logits.dim() != 2 or logits.shape != targets.shape:
        raise ValueError(f"logits and targets must both be (N, C), got {tuple(logits.shape)} and {tuple(targets.shape)}")
    check_probs(targets, "targets")  # one-hot (or soft) in [0, 1], not class indices
    try:
        mask = torch.broadcast_to(label_mask.to(torch.bool), logits.shape)
    except RuntimeError:
        raise ValueError(f"label_mask {tuple(label_mask.shape)} does not broadcast to (N, C) = {tuple(logits.shape)}") from None
    positive = targets > 0
    if (positive & ~mask).any():
        rows = torch.nonzero(positive & ~mask)[:3].tolist()
        raise ValueError(f"the label mask does not cover the labels: positive targets at (prior, class) {rows} "
                         "are masked out; a dataset must label every class it has boxes for")
    loss = sigmoid_focal_loss(logits.float(), targets.float(), alpha=alpha, gamma=gamma, reduction="none")
    loss = torch.where(mask, loss, torch.zeros_like(loss))
    return loss.sum() / max(1.0, float(positive.sum()))


def dataset_aware_atss_loss(out: DenseOutput, gt_boxes: list, gt_labels: list,
                            label_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """ATSS's loss with the dataset-aware focal loss as its classification term.

    label_mask: (B, C) bool, the classes each image's dataset labels (:func:`label_mask_for`).
    The box and centre-ness terms are ATSS's: they only involve positives, which only exist
    for labelled objects.
    """
    batch_size, num_priors, num_classes = out.cls_probs.shape
    if tuple(label_mask.shape) != (batch_size, num_classes):
        raise ValueError(f"label_mask must be (B, C) = ({batch_size}, {num_classes}), one row of labelled "
                         f"classes per image, got {tuple(label_mask.shape)}")
    terms = atss_loss_terms(out, gt_boxes, gt_labels)  # ATSS's assignment, its terms before the sums
    per_prior_mask = prior_label_mask(label_mask, num_priors)  # (B*N, C), rows as terms.cls_logits
    return {"cls": dataset_aware_focal_loss(terms.cls_logits, terms.cls_targets, per_prior_mask),
            "box": terms.box_loss(), "centerness": terms.centerness_loss()}
