"""Post-processing of dense predictions: score threshold, pre-NMS top-k, class-wise NMS.

Follows mmdetection's dense-head test path (``filter_scores_and_topk`` then ``batched_nms``),
with :func:`torchvision.ops.batched_nms` doing the suppression per class.

A prior whose box (or one of whose scores) is not finite is dropped before the threshold and
counted: NaN coordinates would otherwise reach the COCO evaluator, where a NaN box matches
every object at every IoU threshold. The count goes into ``stats["dropped_nonfinite"]`` when
the caller passes a ``stats`` dict (as :func:`kit.eval.coco.evaluate_detector` does), else
into a warning.
"""
from __future__ import annotations

import warnings

import torch
from torchvision.ops import batched_nms


def _check_options(score_threshold: float, nms_iou_threshold: float, pre_nms_topk: int, max_per_image: int) -> None:
    if not 0 <= score_threshold < 1:
        raise ValueError(f"score_threshold must be in [0, 1) (scores are probabilities), got {score_threshold}")
    if not 0 < nms_iou_threshold <= 1:
        raise ValueError(f"nms_iou_threshold must be in (0, 1], got {nms_iou_threshold}")
    for name, value in (("pre_nms_topk", pre_nms_topk), ("max_per_image", max_per_image)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int >= 1, got {type(value).__name__} {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value}")


def _check_scores(scores: torch.Tensor) -> None:
    """Probabilities in [0, 1]; NaN is left to the non-finite drop (comparisons with NaN are False)."""
    outside = (scores < 0) | (scores > 1)  # (B, N, C)
    if outside.any():
        values = scores[outside]
        raise ValueError(f"scores must be probabilities in [0, 1]; got {values.numel()} values outside, in "
                         f"[{values.min().item():.4g}, {values.max().item():.4g}] (logits passed by mistake?)")


def postprocess(scores: torch.Tensor, boxes: torch.Tensor, score_threshold: float = 0.05,
                nms_iou_threshold: float = 0.6, pre_nms_topk: int = 1000, max_per_image: int = 100,
                stats: dict | None = None):
    """Turn dense predictions into detections.

    scores: (B, N, C) probabilities; boxes: (B, N, 4) xyxy. Returns one dict per image with
    ``boxes`` (D, 4), ``scores`` (D,) and ``labels`` (D,), sorted by score. Priors with a
    non-finite box or score are dropped; their number is added to ``stats["dropped_nonfinite"]``
    if ``stats`` is given, and warned about otherwise.
    """
    if scores.dim() != 3 or boxes.dim() != 3 or boxes.shape[:2] != scores.shape[:2] or boxes.shape[-1] != 4:
        raise ValueError(f"need scores (B, N, C) and boxes (B, N, 4); got {tuple(scores.shape)} and {tuple(boxes.shape)}")
    _check_options(score_threshold, nms_iou_threshold, pre_nms_topk, max_per_image)
    scores, boxes = scores.detach(), boxes.detach()
    _check_scores(scores)
    finite = torch.isfinite(boxes).all(-1) & ~torch.isnan(scores).any(-1)  # (B, N); inf scores failed above
    results = []
    num_classes = scores.shape[-1]
    for image_scores, image_boxes, image_finite in zip(scores, boxes, finite):
        candidate = (image_scores > score_threshold) & image_finite[:, None]  # (N, C)
        flat = image_scores.flatten()  # (N * C,)
        keep = torch.nonzero(candidate.flatten()).flatten()
        if keep.numel() > pre_nms_topk:
            keep = keep[flat[keep].topk(pre_nms_topk).indices]
        prior, label = keep // num_classes, keep % num_classes
        det_boxes, det_scores = image_boxes[prior].float(), flat[keep].float()
        kept = batched_nms(det_boxes, det_scores, label, nms_iou_threshold)[:max_per_image]
        results.append({"boxes": det_boxes[kept], "scores": det_scores[kept], "labels": label[kept]})
    _report_dropped(int((~finite).sum()), finite.numel(), stats)
    return results


def _report_dropped(dropped: int, total: int, stats: dict | None) -> None:
    if stats is not None:
        stats["dropped_nonfinite"] = stats.get("dropped_nonfinite", 0) + dropped
    elif dropped:
        warnings.warn(f"postprocess dropped {dropped} of {total} predictions with a non-finite box or score "
                      f"(NaN/inf: a diverged model?)", RuntimeWarning, stacklevel=3)
