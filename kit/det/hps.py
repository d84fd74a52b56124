"""HPS-Det's sample assignment: the number of positives per object as a hyper-parameter.

HPS-Det (Liu et al. 2022, arXiv 2207.11539) treats ``topk``, the number of positive priors
each object gets, as a hyper-parameter. It (1) searches good values of ``topk`` with a
surrogate optimiser (:mod:`kit.hpo.rbf_search`), then (2) picks, at every training iteration
and for every object, one ``topk`` out of the searched set ``K*`` (dynamic assignment).

Only the abstract and the Fig. 1 caption of the paper could be checked, and no official
code was found, so the two rules below are this kit's reading of them:

* **static top-k** (:func:`kit.det.assigners.topk_assign`): rank an object's priors by
  TOOD's alignment ``t = s^alpha * u^beta`` over all levels, take the top ``topk``, keep those
  inside the object with ``t > 0``. With one ``topk`` for all objects this is TAL exactly
  (a unit test checks it).
* **dynamic top-k** (:func:`choose_topk`): for each object, walk down its ranking and count
  the gain ``sum_{i <= k} (u_(i) - iou_floor)`` of the IoUs ``u_(i)`` of the predicted boxes;
  take the ``k`` in ``K*`` with the largest gain (ties: the smallest). Early in training, when
  few predictions overlap their object well, the small values win; once many predictions are
  good, the larger ones do.

The detector trained with it is ATSS's (:func:`hps_loss`: ATSS's loss terms on this assignment).
"""
from __future__ import annotations

from typing import Sequence

import torch

from kit.det.assigners import Assignment, alignment_metric, topk_assign
from kit.det.atss import atss_loss_terms
from kit.det.boxes import box_iou, points_inside
from kit.det.detector import DenseOutput
from kit.det.validation import check_gt, check_gt_boxes, check_probs


def choose_topk(metric: torch.Tensor, ious: torch.Tensor, inside: torch.Tensor, topk_choices: Sequence[int],
                iou_floor: float = 0.5) -> torch.Tensor:
    """Per-object dynamic ``topk`` from the searched set ``topk_choices`` (HPS-Det, kit rule).

    metric, ious: (N, M); inside: (N, M) bool. Priors outside the object or with
    ``metric <= 0`` would be dropped by the assigner, so they add no gain. Returns (M,) long.
    """
    choices = sorted({int(k) for k in topk_choices})
    if not choices or choices[0] < 1:
        raise ValueError(f"topk_choices must be a non-empty set of integers >= 1, got {list(topk_choices)}")
    if not 0 <= iou_floor <= 1:
        raise ValueError(f"iou_floor must be in [0, 1], got {iou_floor}")
    if metric.shape != ious.shape or metric.shape != inside.shape or metric.dim() != 2:
        raise ValueError(f"metric, ious and inside must all be (N, M); got {tuple(metric.shape)}, "
                         f"{tuple(ious.shape)}, {tuple(inside.shape)}")
    n, m = metric.shape
    if m == 0 or n == 0:
        return torch.full((m,), choices[0], dtype=torch.long, device=metric.device)
    most = min(choices[-1], n)
    ranked = metric.topk(most, dim=0).indices  # (K, M) best first
    gt_index = torch.arange(m, device=metric.device)
    valid = inside[ranked, gt_index] & (metric[ranked, gt_index] > 0)
    gain = torch.where(valid, ious[ranked, gt_index] - iou_floor, torch.zeros_like(metric[:most]))
    cumulative = gain.cumsum(0)  # (K, M): gain of taking the top k+1
    at_choice = torch.stack([cumulative[min(k, most) - 1] for k in choices])  # (|K*|, M)
    best = at_choice.argmax(0)  # first maximum -> the smallest k on ties
    return torch.tensor(choices, device=metric.device)[best]


def hps_assign(scores: torch.Tensor, pred_boxes: torch.Tensor, points: torch.Tensor, gt_boxes: torch.Tensor,
               gt_labels: torch.Tensor, topk: int | None = None, topk_choices: Sequence[int] | None = None,
               iou_floor: float = 0.5, alpha: float = 1.0, beta: float = 6.0,
               *, validate: bool = True) -> tuple[Assignment, torch.Tensor]:
    """Top-k assignment of one image on TOOD's metric, static (``topk``) or dynamic (``topk_choices``).

    scores: (N, C) probabilities; pred_boxes: (N, 4); points: (N, 2); gt_boxes: (M, 4);
    gt_labels: (M,), validated as in every assigner (:func:`kit.det.validation.check_gt_boxes`);
    scores must be probabilities. Give exactly one of ``topk`` and ``topk_choices``. Returns
    the :class:`~kit.det.assigners.Assignment` (overlap: the metric ``t``) and the ``topk`` each
    object used, (M,).
    """
    if (topk is None) == (topk_choices is None):
        raise ValueError("give exactly one of topk (static top-k) and topk_choices (dynamic top-k)")
    n, num_classes = scores.shape
    if pred_boxes.shape != (n, 4) or points.shape != (n, 2):
        raise ValueError(f"need pred_boxes (N, 4) and points (N, 2) for N={n}, got "
                         f"{tuple(pred_boxes.shape)} and {tuple(points.shape)}")
    if validate:
        check_gt_boxes(gt_boxes, gt_labels, num_classes, like=pred_boxes)
        check_probs(scores, "scores")  # logits would rank the wrong priors
    m = gt_boxes.shape[0]
    ious = box_iou(pred_boxes.detach().float(), gt_boxes.float())  # (N, M)
    metric = alignment_metric(scores.detach().float()[:, gt_labels], ious, alpha, beta)  # (N, M)
    inside = points_inside(points, gt_boxes)  # (N, M)
    if topk_choices is not None:
        topk_used = choose_topk(metric, ious, inside, topk_choices, iou_floor)
    else:
        topk_used = torch.full((m,), int(topk), dtype=torch.long, device=scores.device)
    return topk_assign(metric, ious, inside, topk_used), topk_used


def hps_targets(out: DenseOutput, gt_boxes: list, gt_labels: list, topk: int | None = None,
                topk_choices: Sequence[int] | None = None, iou_floor: float = 0.5, alpha: float = 1.0,
                beta: float = 6.0) -> tuple[Assignment, list[torch.Tensor]]:
    """:func:`hps_assign` for a batch: an Assignment of (B, N) tensors, and the ``topk`` each
    object used (one (M_i,) tensor per image)."""
    check_gt(gt_boxes, gt_labels, out.cls_probs.shape[0], out.cls_probs.shape[-1], like=out.boxes)
    check_probs(out.cls_probs, "out.cls_probs")  # once for the batch, not per image
    results = [hps_assign(out.cls_probs[b], out.boxes[b], out.priors.points, gt_boxes[b], gt_labels[b],
                          topk, topk_choices, iou_floor, alpha, beta, validate=False) for b in range(len(gt_boxes))]
    assignment = Assignment(torch.stack([a.gt_index for a, _ in results]), torch.stack([a.overlap for a, _ in results]))
    return assignment, [topk_used for _, topk_used in results]


def hps_loss(out: DenseOutput, gt_boxes: list, gt_labels: list, topk: int | None = None,
             topk_choices: Sequence[int] | None = None, iou_floor: float = 0.5) -> tuple[dict, list[torch.Tensor]]:
    """ATSS's loss (:func:`kit.det.atss.atss_loss_terms`) on HPS-Det's assignment, static or dynamic.

    Returns the losses ``{"cls", "box", "centerness"}`` and the ``topk`` each object used.
    """
    assignment, topk_used = hps_targets(out, gt_boxes, gt_labels, topk, topk_choices, iou_floor)
    return atss_loss_terms(out, gt_boxes, gt_labels, assignment.gt_index).losses(), topk_used
