"""Missing annotations in federated labels: aux positives, ignored RoIs and a per-RoI weighted EQL (P16).

The LVIS challenge 2019 winners (Tan et al., arXiv 1911.04692) add equalization loss to Mask
R-CNN and "exploit the data from detection datasets to alleviate the effect of missing
annotations". Their code for the second part was not found; this module is the kit's reading of
it, a design choice flagged on the page:

(a) **aux positives** — the boxes of an auxiliary, exhaustively labelled detection set (here:
    :func:`kit.data.longtail_scenes.aux_view`, the frequent classes on the same images) join the
    image's annotated boxes as extra ground truth for the classification and the box loss
    (:func:`merge_aux_targets`; duplicates of an annotated box are dropped). Box-only: there is no
    mask loss in the kit's detector, so aux boxes can never reach one.
(b) **ignore** — a sampled *background* RoI with IoU >= 0.5 to an aux box of a class the image's
    federated annotation marks *not exhaustive* gets classification-loss weight 0
    (:func:`ignore_weights`): it may sit on an unannotated object, and calling it background
    would teach the classifier that the object is not there.

With neither, every weight is 1 and :func:`weighted_equalization_loss` is
:func:`kit.det.equalization_loss.equalization_loss` exactly (P09's EQL):

.. math::

    \\mathcal L = -\\frac1N \\sum_i v_i \\sum_j w_{ij}\\,[y_{ij}\\log\\sigma(z_{ij})
        + (1-y_{ij})\\log(1-\\sigma(z_{ij}))]

with ``v_i`` the RoI weight (0 ignored, 1 kept), ``w_ij`` EQL's weights and ``N`` the number of
sampled RoIs, ignored ones included (so ignoring a RoI does not rescale the others).

:func:`sample_training_rois` runs the detector's own sampler (:func:`kit.det.two_stage.sample_rois`)
and head and also returns the RoIs, their weights and their false-background flags
(:func:`false_background`: a background RoI with IoU >= 0.5 to a true object that the annotation
dropped), which the page's mechanism check counts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from kit.det.equalization_loss import binary_targets, check_roi_logits, eql_weights
from kit.det.two_stage import sample_rois
from kit.det.validation import check_gt, check_shape

__all__ = ["merge_aux_targets", "ignore_weights", "false_background", "weighted_equalization_loss",
           "sample_training_rois", "roi_losses"]


def _check_boxes(name: str, boxes) -> None:
    check_shape(name, boxes, (None, 4))
    if not boxes.is_floating_point():
        raise TypeError(f"{name} must be float xyxy pixels, got {boxes.dtype}")
    non_finite = int((~torch.isfinite(boxes)).sum())
    if non_finite:
        raise ValueError(f"{name} has {non_finite} non-finite values (NaN or inf)")


def _check_labels(name: str, labels, count: int) -> None:
    if not isinstance(labels, torch.Tensor) or labels.shape != (count,):
        raise ValueError(f"{name} must be ({count},), one per box, got {tuple(getattr(labels, 'shape', ()))}")
    if labels.dtype != torch.long:
        raise TypeError(f"{name} must be long class ids 0..C-1, got {labels.dtype}")
    if count and int(labels.min()) < 0:
        raise ValueError(f"{name} must be class ids >= 0, got {int(labels.min())}")


def _check_threshold(iou_threshold: float) -> None:
    if not isinstance(iou_threshold, (int, float)) or not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold!r}")


def merge_aux_targets(boxes: torch.Tensor, labels: torch.Tensor, aux_boxes: torch.Tensor, aux_labels: torch.Tensor,
                      duplicate_iou: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's annotated boxes (M, 4), labels (M,) plus the aux boxes (A, 4), labels (A,) that are
    not an annotated box again (IoU >= ``duplicate_iou`` with an annotated box of the same class)
    -> (M + A', 4), (M + A',): the annotated ones first, in order. Either side may be empty."""
    _check_boxes("boxes", boxes)
    _check_labels("labels", labels, len(boxes))
    _check_boxes("aux_boxes", aux_boxes)
    _check_labels("aux_labels", aux_labels, len(aux_boxes))
    _check_threshold(duplicate_iou)
    if len(aux_boxes) == 0:
        return boxes, labels
    keep = torch.ones(len(aux_boxes), dtype=torch.bool, device=aux_boxes.device)
    if len(boxes):
        same = (box_iou(aux_boxes.float(), boxes.float()) >= duplicate_iou) & (aux_labels[:, None] == labels[None, :])
        keep = ~same.any(1)
    return torch.cat([boxes, aux_boxes[keep].to(boxes.dtype)]), torch.cat([labels, aux_labels[keep]])


def ignore_weights(rois: torch.Tensor, roi_labels: torch.Tensor, aux_boxes: torch.Tensor, aux_labels: torch.Tensor,
                   not_exhaustive: torch.Tensor, iou_threshold: float = 0.5) -> torch.Tensor:
    """One image's RoI weights (S,) float: 0 for a background RoI (``roi_labels == 0``) with IoU >=
    ``iou_threshold`` to an aux box whose class is not exhaustive in this image, 1 otherwise.

    rois (S, 4) xyxy; roi_labels (S,) in 0..C (0 background); aux_boxes (A, 4), aux_labels (A,) in
    0..C-1; not_exhaustive (C,) bool, the image's federated not-exhaustive set.
    """
    _check_boxes("rois", rois)
    if not isinstance(roi_labels, torch.Tensor) or roi_labels.shape != (len(rois),) or roi_labels.dtype != torch.long:
        raise ValueError(f"roi_labels must be long ({len(rois)},), 0 background, got "
                         f"{getattr(roi_labels, 'dtype', type(roi_labels).__name__)} {tuple(getattr(roi_labels, 'shape', ()))}")
    _check_boxes("aux_boxes", aux_boxes)
    _check_labels("aux_labels", aux_labels, len(aux_boxes))
    if not isinstance(not_exhaustive, torch.Tensor) or not_exhaustive.dim() != 1 or not_exhaustive.dtype != torch.bool:
        raise ValueError(f"not_exhaustive must be a (C,) bool tensor, got "
                         f"{getattr(not_exhaustive, 'dtype', type(not_exhaustive).__name__)} "
                         f"{tuple(getattr(not_exhaustive, 'shape', ()))}")
    if len(aux_labels) and int(aux_labels.max()) >= len(not_exhaustive):
        raise ValueError(f"aux_labels must be < C = {len(not_exhaustive)}, got {int(aux_labels.max())}")
    _check_threshold(iou_threshold)
    weights = torch.ones(len(rois), dtype=torch.float32, device=rois.device)
    if len(rois) == 0 or len(aux_boxes) == 0:
        return weights
    flagged = not_exhaustive.to(aux_labels.device)[aux_labels]                          # (A,)
    if not bool(flagged.any()):
        return weights
    near = (box_iou(rois.float(), aux_boxes[flagged].float()) >= iou_threshold).any(1)  # (S,)
    weights[near & (roi_labels == 0)] = 0.0
    return weights


def false_background(rois: torch.Tensor, roi_labels: torch.Tensor, missing_boxes: torch.Tensor,
                     iou_threshold: float = 0.5) -> torch.Tensor:
    """(S,) long: for a background RoI with IoU >= ``iou_threshold`` to an unannotated true object
    (``missing_boxes`` (D, 4)), the index of the best such object; -1 elsewhere."""
    _check_boxes("rois", rois)
    _check_boxes("missing_boxes", missing_boxes)
    _check_threshold(iou_threshold)
    index = torch.full((len(rois),), -1, dtype=torch.long, device=rois.device)
    if len(rois) == 0 or len(missing_boxes) == 0:
        return index
    iou, best = box_iou(rois.float(), missing_boxes.float()).max(1)
    hit = (iou >= iou_threshold) & (roi_labels == 0)
    index[hit] = best[hit]
    return index


def weighted_equalization_loss(logits: torch.Tensor, labels: torch.Tensor, image_frequency, lam: float,
                               roi_weights: torch.Tensor | None = None) -> torch.Tensor:
    """EQL with per-RoI weights (the module docstring): logits (R, C), labels (R,) in 0..C, roi_weights
    (R,) in [0, 1] (None: all 1) -> scalar, divided by R. ``lam = 0`` is sigmoid BCE with RoI weights."""
    num_classes = len(image_frequency)
    check_roi_logits(logits, labels, num_classes)
    if labels.numel() and (labels.min() < 0 or labels.max() > num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}] (0 background), got {labels.min()}..{labels.max()}")
    if roi_weights is not None:
        if not isinstance(roi_weights, torch.Tensor) or roi_weights.shape != labels.shape:
            raise ValueError(f"roi_weights must be ({len(labels)},), one per RoI, got "
                             f"{tuple(getattr(roi_weights, 'shape', ()))}")
        if not roi_weights.is_floating_point():
            raise TypeError(f"roi_weights must be float (0 ignored, 1 kept), got {roi_weights.dtype}")
        if not bool(torch.isfinite(roi_weights).all()) or bool(((roi_weights < 0) | (roi_weights > 1)).any()):
            raise ValueError("roi_weights must be finite and in [0, 1]")
    if logits.shape[0] == 0:
        return logits.sum() * 0
    weights = eql_weights(labels, image_frequency, lam).to(logits.dtype)                   # (R, C)
    if roi_weights is not None:
        weights = weights * roi_weights.to(logits.dtype)[:, None]
    per_entry = F.binary_cross_entropy_with_logits(logits, binary_targets(labels, num_classes).to(logits.dtype),
                                                   reduction="none")                      # (R, C)
    return (weights * per_entry).sum() / logits.shape[0]


def sample_training_rois(model, images: torch.Tensor, gt_boxes: list, gt_labels: list, proposals: list,
                         aux_boxes: list | None = None, aux_labels: list | None = None,
                         not_exhaustive: torch.Tensor | None = None, missing_boxes: list | None = None,
                         use_aux_positives: bool = False, use_ignore: bool = False) -> dict:
    """A :class:`kit.det.region_detector.RegionDetector` training step's RoIs and head outputs.

    gt_boxes/gt_labels: the federated annotation per image; aux_boxes/aux_labels: the aux set per
    image (needed by either ingredient); not_exhaustive (B, C) bool (needed by ``use_ignore``);
    missing_boxes: the true objects the annotation dropped, per image (optional, for the
    false-background count). -> dict of logits (R, C), deltas (R, 4), labels (R,), box_targets
    (R, 4), weights (R,), rois (R, 4), image (R,) index, false_background (R,) (see
    :func:`false_background`; all -1 without ``missing_boxes``). With both switches off this is
    ``model.sampled_outputs`` (same sampler, same draw) plus weights of 1.
    """
    batch = images.shape[0]
    check_gt(gt_boxes, gt_labels, batch, model.num_classes, like=images)
    if use_aux_positives or use_ignore:
        if aux_boxes is None or aux_labels is None:
            raise ValueError("the aux ingredients need aux_boxes and aux_labels, one tensor per image")
        check_gt(aux_boxes, aux_labels, batch, model.num_classes, like=images)
    if use_ignore:
        if not isinstance(not_exhaustive, torch.Tensor) or not_exhaustive.shape != (batch, model.num_classes):
            raise ValueError(f"use_ignore needs not_exhaustive ({batch}, {model.num_classes}) bool, got "
                             f"{tuple(getattr(not_exhaustive, 'shape', ()))}")
    if missing_boxes is not None and len(missing_boxes) != batch:
        raise ValueError(f"missing_boxes must hold one tensor per image ({batch}), got {len(missing_boxes)}")
    if use_aux_positives:
        merged = [merge_aux_targets(b, l, ab, al) for b, l, ab, al in zip(gt_boxes, gt_labels, aux_boxes, aux_labels)]
        gt_boxes, gt_labels = [m[0] for m in merged], [m[1] for m in merged]
    sample = sample_rois(proposals, gt_boxes, gt_labels, model.num_rois)
    logits, deltas = model(images, sample.rois)
    weights, flags, image = [], [], []
    for i, (rois, labels) in enumerate(zip(sample.rois, sample.labels)):
        if use_ignore:
            weights.append(ignore_weights(rois, labels, aux_boxes[i], aux_labels[i], not_exhaustive[i].bool()))
        else:
            weights.append(torch.ones(len(rois), device=rois.device))
        flags.append(false_background(rois, labels, missing_boxes[i]) if missing_boxes is not None
                     else torch.full((len(rois),), -1, dtype=torch.long, device=rois.device))
        image.append(torch.full((len(rois),), i, dtype=torch.long, device=rois.device))
    return {"logits": logits, "deltas": deltas, "labels": torch.cat(sample.labels),
            "box_targets": torch.cat(sample.box_targets), "weights": torch.cat(weights), "rois": torch.cat(sample.rois),
            "image": torch.cat(image), "false_background": torch.cat(flags)}


def roi_losses(out: dict, image_frequency, lam: float, beta: float = 1 / 9) -> dict[str, torch.Tensor]:
    """``{"cls": weighted EQL, "box": smooth L1 on the foreground / R}`` of :func:`sample_training_rois`' output,
    the box term as :meth:`RegionDetector.loss_from` (ignored RoIs are background: no box term either)."""
    labels = out["labels"]
    cls = weighted_equalization_loss(out["logits"].float(), labels, image_frequency, lam, out["weights"])
    foreground = labels > 0
    box = F.smooth_l1_loss(out["deltas"].float()[foreground], out["box_targets"][foreground], beta=beta,
                           reduction="sum") / max(1, labels.numel())
    return {"cls": cls, "box": box}
