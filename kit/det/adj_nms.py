"""Post-processing of the OpenImages 2019 winner: Gaussian soft-NMS, adj-NMS, and box/score voting.

"1st Place Solutions for OpenImage2019" (arXiv 2003.07557) re-scores and fuses detections after
the head; no code of it was released, so these follow the paper's description and soft-NMS
(Bodla et al. 2017):

* **Gaussian soft-NMS** (:func:`soft_nms`): take the best box M, then decay every remaining box of
  its class by ``exp(-IoU(M, b)^2 / σ)`` instead of removing it; repeat on the rest. Boxes whose
  score falls below ``score_threshold`` (0.001, soft-NMS's reference code) are dropped. torchvision
  has no soft-NMS, so it is written here (greedy, O(N^2), on a precomputed IoU matrix).
* **adj-NMS** (:func:`adj_nms`): hard NMS at IoU 0.5 first (``torchvision.ops.batched_nms``), then
  Gaussian soft-NMS (σ = 0.5) re-scores the survivors: near-duplicates go, and what overlaps but
  survived is ranked down. The order (hard first) is the paper's; σ = 0.5 is from a secondary
  summary (unverified). Its output is a subset of NMS's survivors, no score grows, the top box
  keeps its score, and σ → ∞ gives NMS back.
* **Box and score voting** across models (:func:`vote`): all models' detections of an image are
  clustered greedily (best first; a cluster takes the same-class boxes with IoU > ``iou_threshold``
  to its best box); the fused box is the score-weighted mean of the cluster's boxes, the fused score
  the mean over the models of each model's best score in the cluster (0 for a model with none), so
  agreement is rewarded. One model with threshold 1 gives its detections back unchanged. The
  paper's thresholds were not found; 0.55 is this module's default.

Boxes are xyxy pixels; IoU is torchvision's (no +1). Classes are kept apart with
torchvision's trick, an offset per class larger than any coordinate.
"""
from __future__ import annotations

import math

import torch
from torchvision.ops import batched_nms, box_iou

from kit.det.validation import check_shape

__all__ = ["soft_nms", "adj_nms", "vote", "nms_outcome"]


def _check_detections(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor | None) -> None:
    check_shape("boxes", boxes, (None, 4))
    check_shape("scores", scores, (boxes.shape[0],))
    if not boxes.is_floating_point() or not scores.is_floating_point():
        raise TypeError(f"boxes and scores must be floating point, got {boxes.dtype} and {scores.dtype}")
    if not torch.isfinite(boxes).all() or not torch.isfinite(scores).all():
        raise ValueError("boxes and scores must be finite (NaN/inf detections: a diverged model?)")
    if labels is not None:
        check_shape("labels", labels, (boxes.shape[0],))
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise TypeError(f"labels must be integers, got {labels.dtype}")


def _check_sigma(sigma: float, score_threshold: float) -> None:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or math.isnan(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a number > 0 (math.inf: no decay), got {sigma!r}")
    if not 0 <= score_threshold < 1:
        raise ValueError(f"score_threshold must be in [0, 1), got {score_threshold}")


def _class_offset_boxes(boxes: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Boxes moved apart per class, so boxes of two classes never overlap (torchvision's trick)."""
    if labels is None or boxes.numel() == 0:
        return boxes
    offset = labels.to(boxes.dtype) * (boxes.abs().max() * 2 + 1)
    return boxes + offset[:, None]


def soft_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor | None = None, sigma: float = 0.5,
             score_threshold: float = 0.001) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian soft-NMS per class: boxes (N, 4), scores (N,), labels (N,) or None (one class).

    Returns (keep (K,) indices into the input, new scores (K,)), best new score first.
    """
    _check_detections(boxes, scores, labels)
    _check_sigma(sigma, score_threshold)
    iou = box_iou(*[_class_offset_boxes(boxes.float(), labels)] * 2)  # (N, N); 0 across classes
    decay = torch.exp(-iou ** 2 / sigma)  # (N, N); 1 everywhere for sigma = inf
    current = scores.float().clone()
    alive = current >= score_threshold  # (N,)
    order, new_scores = [], []
    for _ in range(len(scores)):
        if not alive.any():
            break
        best = int(torch.where(alive, current, torch.full_like(current, -1.0)).argmax())
        order.append(best)
        new_scores.append(current[best])
        alive[best] = False
        current = torch.where(alive, current * decay[best], current)
        alive &= current >= score_threshold
    keep = torch.tensor(order, dtype=torch.long, device=boxes.device)
    return keep, (torch.stack(new_scores) if new_scores else scores.new_zeros(0).float()).to(scores.dtype)


def adj_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, nms_threshold: float = 0.5,
            sigma: float = 0.5, score_threshold: float = 0.001) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard NMS at ``nms_threshold`` per class, then Gaussian soft-NMS (``sigma``) of the survivors.

    boxes (N, 4), scores (N,), labels (N,) -> (keep (K,) indices into the input, new scores (K,)),
    best first.
    """
    _check_detections(boxes, scores, labels)
    if not 0 < nms_threshold <= 1:
        raise ValueError(f"nms_threshold must be in (0, 1], got {nms_threshold}")
    _check_sigma(sigma, score_threshold)
    survivors = batched_nms(boxes.float(), scores.float(), labels, nms_threshold)  # (S,), best first
    keep, new_scores = soft_nms(boxes[survivors], scores[survivors], labels[survivors], sigma, score_threshold)
    return survivors[keep], new_scores


def nms_outcome(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, nms_threshold: float = 0.5,
                sigma: float = 0.5, score_threshold: float = 0.001) -> tuple[torch.Tensor, torch.Tensor]:
    """For a figure: per input box, 0 removed, 1 kept with its score, 2 kept but decayed; and the
    new scores (N,) (0 where removed)."""
    keep, new_scores = adj_nms(boxes, scores, labels, nms_threshold, sigma, score_threshold)
    state = torch.zeros(len(scores), dtype=torch.long, device=scores.device)
    final = torch.zeros_like(scores)
    final[keep] = new_scores
    state[keep] = torch.where(new_scores < scores[keep] * (1 - 1e-6), 2, 1)
    return state, final


def vote(detections: list[dict], iou_threshold: float = 0.55) -> dict:
    """Fuse one image's detections from several models: ``[{boxes (N_m, 4), scores (N_m,), labels
    (N_m,)}]`` per model -> ``{boxes (K, 4), scores (K,), labels (K,)}``, best first (see the module
    docstring)."""
    if not isinstance(detections, (list, tuple)) or not detections:
        raise ValueError("detections must be a non-empty list, one dict per model")
    if not 0 <= iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    for m, det in enumerate(detections):
        if not isinstance(det, dict) or not {"boxes", "scores", "labels"} <= set(det):
            raise ValueError(f"detections[{m}] must be a dict with boxes, scores and labels")
        _check_detections(det["boxes"], det["scores"], det["labels"])
    boxes = torch.cat([d["boxes"].float() for d in detections])  # (N, 4)
    scores = torch.cat([d["scores"].float() for d in detections])
    labels = torch.cat([d["labels"] for d in detections])
    device = scores.device
    model = torch.cat([torch.full((len(d["scores"]),), m, dtype=torch.long, device=device)
                       for m, d in enumerate(detections)])
    iou = box_iou(*[_class_offset_boxes(boxes, labels)] * 2)  # (N, N); 0 across classes
    unused = torch.ones(len(scores), dtype=torch.bool, device=device)
    fused_boxes, fused_scores, fused_labels = [], [], []
    for anchor in scores.argsort(descending=True).tolist():
        if not unused[anchor]:
            continue
        members = unused & (iou[anchor] > iou_threshold)
        members[anchor] = True  # the anchor is always its own member (also at threshold 1)
        unused &= ~members
        weights = scores[members]
        fused_boxes.append((boxes[members] * weights[:, None]).sum(0) / weights.sum().clamp(min=1e-12))
        best_per_model = torch.zeros(len(detections), device=device).scatter_reduce(0, model[members], weights, "amax")
        fused_scores.append(best_per_model.mean())
        fused_labels.append(labels[anchor])
    if not fused_scores:
        return {"boxes": boxes.new_zeros(0, 4), "scores": scores.new_zeros(0), "labels": labels.new_zeros(0)}
    out = {"boxes": torch.stack(fused_boxes), "scores": torch.stack(fused_scores), "labels": torch.stack(fused_labels)}
    order = out["scores"].argsort(descending=True, stable=True)
    return {k: v[order] for k, v in out.items()}
