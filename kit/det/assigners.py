"""Label assigners: which priors are positives for which object.

Four rules, each per image, each returning an :class:`Assignment`: for every prior the index of
its object (``-1`` for a negative) and the overlap the rule decided on:

* :func:`max_iou_assign` — RetinaNet / Faster R-CNN: IoU of a prior's anchor box with the
  objects against fixed thresholds.
* :func:`atss_assign` — ATSS (Zhang et al., CVPR 2020, arXiv 1912.02424): per level the
  ``topk`` priors nearest to the object's centre are candidates; the IoU threshold is the mean plus
  the standard deviation of the candidates' IoUs.
* :func:`task_aligned_assign` — TOOD's Task Alignment Learning (Feng et al., ICCV 2021,
  arXiv 2108.07755): rank priors by ``t = s^alpha * u^beta``, the classification score ``s``
  of the object's class times the IoU ``u`` of the predicted box, over all levels together.
* :func:`topk_assign` — a static top-k rule on any ranking metric, with the number of
  positives ``topk`` per object as the hyper-parameter (HPS-Det, Liu et al. 2022,
  arXiv 2207.11539; a scalar ``topk`` and TOOD's metric give TAL exactly).

Every assigner first validates its ground truth (:func:`kit.det.validation.check_gt_boxes`:
finite xyxy boxes with ``x2 >= x1``, ``y2 >= y1``, the dtype and device of the priors or
predictions; labels in range) and TAL its scores (probabilities in [0, 1]): wrong ground truth
would otherwise silently get no positives. The batch losses (``atss_loss``, ``tood_loss``, ...)
check the whole batch once and call the assigners with ``validate=False``, so the training hot
path does not repeat the check per image.

The first three follow mmdetection (``MaxIoUAssigner``, ``ATSSAssigner``, ``TaskAlignedAssigner``),
including the order of their steps and how a prior claimed by several objects is resolved
(the object with the highest IoU wins; on an exact tie, the lowest object index); the top-k rule
is TAL's last steps on a metric of the caller's choice.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from kit.det.boxes import box_iou, centers, points_inside
from kit.det.validation import check_gt_boxes, check_probs, check_shape

_NEG_INF = float("-inf")


class Assignment(NamedTuple):
    """What an assigner returns, per prior (shape (N,), or (B, N) for a batch).

    gt_index: long, the index of the object the prior is assigned to; -1 for background
    (:func:`max_iou_assign` also gives -2: ignored by the loss).
    overlap: float, the number the rule decided on for that prior — :func:`max_iou_assign`: its
    largest IoU with any object; :func:`atss_assign`: its IoU with its object;
    :func:`task_aligned_assign`, :func:`topk_assign`: the ranking metric (TOOD's ``t``) with its
    object. 0 for background, except in :func:`max_iou_assign`.
    """

    gt_index: torch.Tensor
    overlap: torch.Tensor


def _resolve_by_iou(candidate_pos: torch.Tensor, ious: torch.Tensor):
    """Give each prior to the positive object with the highest IoU.

    candidate_pos: (N, M) bool, prior n is a positive candidate for object m; ious: (N, M).
    Returns assigned (N,) with -1 for none, and the winning IoU (N,) (0 for none).
    """
    masked = torch.where(candidate_pos, ious, torch.full_like(ious, _NEG_INF))
    best_iou, best_gt = masked.max(dim=1)  # ties -> first (lowest) object index
    positive = best_iou > _NEG_INF
    assigned = torch.where(positive, best_gt, torch.full_like(best_gt, -1))
    return assigned, torch.where(positive, best_iou, torch.zeros_like(best_iou))


def max_iou_assign(anchors: torch.Tensor, gt_boxes: torch.Tensor, pos_iou_threshold: float = 0.5,
                   neg_iou_threshold: float = 0.4, min_pos_iou_threshold: float = 0.0,
                   match_low_quality: bool = True, *, validate: bool = True) -> Assignment:
    """Max-IoU assignment (RetinaNet 0.5/0.4; RPN 0.7/0.3).

    anchors: (N, 4); gt_boxes: (M, 4). ``gt_index`` (N,) is the object index for positives
    (IoU >= ``pos_iou_threshold``), -1 for negatives (IoU < ``neg_iou_threshold``) and -2 for
    priors in between (ignored by the loss); ``overlap`` is each prior's largest IoU. With
    ``match_low_quality`` every object also takes the anchors with its highest IoU (if that IoU
    >= ``min_pos_iou_threshold``), as mmdetection does.
    """
    check_shape("anchors", anchors, (None, 4))
    if validate:
        check_gt_boxes(gt_boxes, like=anchors)
    if not 0 <= neg_iou_threshold <= pos_iou_threshold <= 1:
        raise ValueError(f"need 0 <= neg_iou_threshold <= pos_iou_threshold <= 1, got "
                         f"neg_iou_threshold={neg_iou_threshold}, pos_iou_threshold={pos_iou_threshold}")
    n, m = anchors.shape[0], gt_boxes.shape[0]
    assigned = torch.full((n,), -1, dtype=torch.long, device=anchors.device)
    if m == 0 or n == 0:
        return Assignment(assigned, anchors.new_zeros(n))
    ious = box_iou(anchors, gt_boxes)  # (N, M)
    max_iou, argmax = ious.max(dim=1)  # (N,)
    assigned[(max_iou >= neg_iou_threshold) & (max_iou < pos_iou_threshold)] = -2
    positive = max_iou >= pos_iou_threshold
    assigned[positive] = argmax[positive]
    if match_low_quality:
        gt_max_iou = ious.max(dim=0).values  # (M,)
        for gt in range(m):  # later objects overwrite earlier ones, as in mmdetection
            if gt_max_iou[gt] >= min_pos_iou_threshold and gt_max_iou[gt] > 0:
                assigned[ious[:, gt] == gt_max_iou[gt]] = gt
    return Assignment(assigned, max_iou)


def atss_assign(anchors: torch.Tensor, num_per_level: list[int], gt_boxes: torch.Tensor, topk: int = 9,
                *, validate: bool = True) -> Assignment:
    """Adaptive Training Sample Selection.

    anchors: (N, 4) anchor boxes of all levels concatenated (for point priors: squares of
    ``anchor_scale * stride`` round each point); num_per_level: priors per level, summing to
    N; gt_boxes: (M, 4). For each object:

    1. on every level, the ``topk`` priors whose centres are nearest the object's centre are
       candidates (at most ``topk * levels``);
    2. the IoU threshold is mean + std (unbiased) of the candidates' IoUs;
    3. candidates with IoU >= threshold whose centre lies inside the object are positives.

    Returns the object index per prior (-1 negative) and its IoU with that object (0 for negatives).
    """
    check_shape("anchors", anchors, (None, 4))
    if validate:
        check_gt_boxes(gt_boxes, like=anchors)
    if sum(num_per_level) != anchors.shape[0]:
        raise ValueError(f"num_per_level sums to {sum(num_per_level)} but there are {anchors.shape[0]} anchors")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    n, m = anchors.shape[0], gt_boxes.shape[0]
    if m == 0 or n == 0:
        return Assignment(torch.full((n,), -1, dtype=torch.long, device=anchors.device), anchors.new_zeros(n))

    ious = box_iou(anchors, gt_boxes)  # (N, M)
    anchor_centers = centers(anchors)  # (N, 2)
    distances = torch.cdist(anchor_centers, centers(gt_boxes))  # (N, M)

    # 1. Candidates: the topk nearest priors on every level.
    candidates, start = [], 0
    for count in num_per_level:
        nearest = distances[start:start + count].topk(min(topk, count), dim=0, largest=False).indices  # (k, M)
        candidates.append(nearest + start)
        start += count
    candidates = torch.cat(candidates)  # (K_total, M)
    gt_index = torch.arange(m, device=anchors.device)
    candidate_ious = ious[candidates, gt_index]  # (K_total, M)

    # 2. Adaptive threshold per object; 3. keep candidates above it whose centre is inside.
    threshold = candidate_ious.mean(0) + candidate_ious.std(0)  # (M,)
    inside = points_inside(anchor_centers, gt_boxes)  # (N, M)
    is_pos = (candidate_ious >= threshold) & inside[candidates, gt_index]
    candidate_pos = torch.zeros((n, m), dtype=torch.bool, device=anchors.device)
    candidate_pos[candidates[is_pos], gt_index.expand_as(candidates)[is_pos]] = True
    return Assignment(*_resolve_by_iou(candidate_pos, ious))


def alignment_metric(scores: torch.Tensor, ious: torch.Tensor, alpha: float = 1.0,
                     beta: float = 6.0) -> torch.Tensor:
    """TOOD's task-alignment metric ``t = s^alpha * u^beta`` (element-wise)."""
    return scores.pow(alpha) * ious.pow(beta)


def task_aligned_assign(scores: torch.Tensor, pred_boxes: torch.Tensor, points: torch.Tensor,
                        gt_boxes: torch.Tensor, gt_labels: torch.Tensor, topk: int = 13,
                        alpha: float = 1.0, beta: float = 6.0, *, validate: bool = True) -> Assignment:
    """Task-aligned assignment (TOOD's TAL).

    scores: (N, C) class probabilities (checked to lie in [0, 1]); pred_boxes: (N, 4)
    predicted xyxy boxes; points: (N, 2) prior centres; gt_boxes: (M, 4) of pred_boxes' dtype;
    gt_labels: (M,) in [0, C). Both predictions are
    treated as constants (the assignment is not differentiated). For each object:

    1. ``t = s^alpha * u^beta`` for every prior, with ``s`` the score of the object's class and
       ``u`` the IoU of the prior's predicted box with the object;
    2. the ``min(topk, N)`` priors with the largest ``t`` over *all levels together* are
       candidates;
    3. of those, the ones whose centre lies inside the object (by more than 0.01 px) and
       whose ``t`` is positive are positives; so an object may end with fewer than ``topk``
       positives, or none;
    4. a prior that is positive for several objects goes to the one with the highest IoU.

    Returns the object index of each prior (-1 for negatives) and its metric ``t`` for that
    object (0 for negatives), both (N,).
    """
    check_shape("scores", scores, (None, None))
    n, num_classes = scores.shape
    check_shape("pred_boxes", pred_boxes, (n, 4))
    check_shape("points", points, (n, 2))
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    if alpha < 0 or beta < 0:
        raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
    if validate:
        check_gt_boxes(gt_boxes, gt_labels, num_classes, like=pred_boxes)
        check_probs(scores, "scores")  # logits here would rank the wrong priors
    m = gt_boxes.shape[0]
    assigned = torch.full((n,), -1, dtype=torch.long, device=scores.device)
    if m == 0 or n == 0:
        return Assignment(assigned, scores.new_zeros(n))

    scores, pred_boxes = scores.detach(), pred_boxes.detach()
    ious = box_iou(pred_boxes, gt_boxes)  # (N, M)
    metric = alignment_metric(scores[:, gt_labels], ious, alpha, beta)  # (N, M)

    # 2.-4. The static top-k rule on this metric: top-k over all levels at once, keep t > 0
    # with the centre inside the object, resolve priors claimed twice by IoU.
    return topk_assign(metric, ious, points_inside(points, gt_boxes), topk)


def topk_assign(metric: torch.Tensor, ious: torch.Tensor, inside: torch.Tensor, topk) -> Assignment:
    """Static top-k assignment: each object takes its ``topk`` best-ranked priors.

    metric: (N, M) ranking metric of prior n for object m (e.g. TOOD's ``t``; larger is
    better); ious: (N, M) IoU used to resolve priors claimed by several objects; inside:
    (N, M) bool, prior n's centre lies inside object m; topk: an int (the same for every
    object) or an (M,) integer tensor (one per object, HPS-Det's hyper-parameters). For
    each object the ``min(topk_m, N)`` priors with the largest metric (over all levels) are
    candidates; those with ``metric > 0`` and ``inside`` are positives; a prior claimed by
    several objects goes to the highest IoU (mmdetection's ``TaskAlignedAssigner`` order).

    Returns the object index per prior (-1 negative) and the metric of the winning pair
    (0 for negatives), both (N,).
    """
    check_shape("metric", metric, (None, None))
    n, m = metric.shape
    check_shape("ious", ious, (n, m))
    check_shape("inside", inside, (n, m))
    if inside.dtype != torch.bool:
        raise ValueError(f"inside must be a bool tensor, got {inside.dtype}")
    per_object = torch.as_tensor(topk, device=metric.device)
    if per_object.is_floating_point() or per_object.dim() > 1 or (per_object.dim() == 1 and per_object.numel() != m):
        raise ValueError(f"topk must be an int or an (M,) = ({m},) integer tensor, got {topk!r}")
    if per_object.numel() and per_object.min() < 1:
        raise ValueError(f"topk must be >= 1 for every object, got {per_object.tolist()}")
    assigned = torch.full((n,), -1, dtype=torch.long, device=metric.device)
    if m == 0 or n == 0:
        return Assignment(assigned, metric.new_zeros(n))

    # Candidates: the top min(topk_m, N) priors of each object by the metric.
    most = min(int(per_object.max()), n)
    candidates = metric.topk(most, dim=0).indices  # (K, M), best first
    rank = torch.arange(most, device=metric.device)[:, None]  # (K, 1)
    within_topk = rank < per_object.expand(m)[None]  # (K, M): rank below this object's topk
    gt_index = torch.arange(m, device=metric.device)
    keep = within_topk & (metric[candidates, gt_index] > 0) & inside[candidates, gt_index]
    candidate_pos = torch.zeros((n, m), dtype=torch.bool, device=metric.device)
    candidate_pos[candidates[keep], gt_index.expand_as(candidates)[keep]] = True
    assigned, _ = _resolve_by_iou(candidate_pos, ious)
    positive = assigned >= 0
    alignment = torch.zeros(n, dtype=metric.dtype, device=metric.device)
    alignment[positive] = metric[positive.nonzero().flatten(), assigned[positive]]
    return Assignment(assigned, alignment)
