"""Set prediction for DETR-style detectors: Hungarian matching and the set loss.

DETR (Carion et al., arXiv 2005.12872) predicts a fixed set of ``Q`` boxes and matches them
one-to-one to the ``M <= Q`` objects by minimising a matching cost with the Hungarian
algorithm (:func:`scipy.optimize.linear_sum_assignment`). Matched queries learn their object's
class and box; every other query learns "no object". No anchors, no NMS.

The matching cost of query ``i`` and object ``j`` is

.. math:: C_{ij} = \\lambda_{cls}\\, c_{cls}(i, j) + \\lambda_{L1} \\lVert b_i - b_j \\rVert_1
          - \\lambda_{giou}\\, \\mathrm{GIoU}(b_i, b_j)

with boxes as normalised ``(cx, cy, w, h)``. Two classification forms, as in the two papers:

* ``"softmax"`` (DETR): logits have ``K + 1`` columns, the last being "no object";
  ``c_cls = -p_i(c_j)``; the loss is cross-entropy with the no-object class weighted 0.1.
  Weights 1 / 5 / 2 (cost and loss).
* ``"focal"`` (Deformable DETR, arXiv 2010.04159): ``K`` sigmoid logits; ``c_cls`` is the focal
  loss of a positive minus that of a negative at ``p_i(c_j)``; the loss is sigmoid focal loss
  (alpha 0.25, gamma 2) summed and divided by the number of objects. Weights 2 / 5 / 2.

Both follow the official ``HungarianMatcher`` and ``SetCriterion``; auxiliary losses (one per
decoder layer, each matched on its own) are included when the outputs carry them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

from kit.det.validation import check_gt

__all__ = ["SET_WEIGHTS", "classification_cost", "match_cost", "hungarian_match", "set_loss",
           "targets_from_pixels"]

# (class, L1, GIoU) weights, the same for the matching cost and the loss in both papers.
SET_WEIGHTS = {"softmax": (1.0, 5.0, 2.0), "focal": (2.0, 5.0, 2.0)}
_MODES = tuple(SET_WEIGHTS)


def targets_from_pixels(boxes: list, labels: list, image_size: int) -> list[dict]:
    """Per-image xyxy pixel boxes [(M_i, 4)] and labels [(M_i,)] -> DETR targets.

    Each target is ``{"labels": (M,), "boxes": (M, 4) normalised (cx, cy, w, h)}``. The pixel
    boxes are validated first (:func:`kit.det.validation.check_gt`: finite, x2 >= x1, y2 >= y1).
    """
    if len(boxes) != len(labels):
        raise ValueError(f"{len(boxes)} box lists but {len(labels)} label lists")
    if image_size <= 0:
        raise ValueError(f"image_size must be > 0 pixels, got {image_size}")
    if not all(isinstance(b, torch.Tensor) for b in boxes):
        raise TypeError("boxes must be a list of (M_i, 4) tensors, one per image")
    pixels = [b.float() for b in boxes]  # a conversion: any real dtype of pixels is fine here
    check_gt(pixels, labels, len(boxes))
    return [{"labels": l.long(), "boxes": box_convert(b / image_size, "xyxy", "cxcywh")}
            for b, l in zip(pixels, labels)]


def _check_mode(mode: str) -> None:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")


def classification_cost(logits: torch.Tensor, target_labels: torch.Tensor, mode: str = "focal",
                        alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """(Q, M) cost of giving query i the class of object j. logits: (Q, K) or (Q, K + 1)."""
    _check_mode(mode)
    if mode == "softmax":
        return -logits.softmax(-1)[:, target_labels]
    prob = logits.sigmoid()[:, target_labels]  # (Q, M)
    positive = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
    negative = (1 - alpha) * prob ** gamma * -(1 - prob + 1e-8).log()
    return positive - negative


def match_cost(logits: torch.Tensor, boxes: torch.Tensor, target_labels: torch.Tensor,
               target_boxes: torch.Tensor, mode: str = "focal", weights=None) -> torch.Tensor:
    """(Q, M) matching cost. boxes (Q, 4) and target_boxes (M, 4) normalised (cx, cy, w, h)."""
    _check_mode(mode)
    w_cls, w_l1, w_giou = weights or SET_WEIGHTS[mode]
    cost_class = classification_cost(logits, target_labels, mode)
    cost_l1 = torch.cdist(boxes.float(), target_boxes.float(), p=1)  # (Q, M)
    cost_giou = -generalized_box_iou(box_convert(boxes.float(), "cxcywh", "xyxy"),
                                     box_convert(target_boxes.float(), "cxcywh", "xyxy"))
    return w_cls * cost_class + w_l1 * cost_l1 + w_giou * cost_giou


def _check_outputs(logits, boxes, targets, num_classes, mode) -> None:
    _check_mode(mode)
    if logits.dim() != 3 or boxes.dim() != 3 or boxes.shape[-1] != 4 or logits.shape[:2] != boxes.shape[:2]:
        raise ValueError(f"need logits (B, Q, K) and boxes (B, Q, 4); got {tuple(logits.shape)} and {tuple(boxes.shape)}")
    expected = num_classes + 1 if mode == "softmax" else num_classes
    if logits.shape[-1] != expected:
        raise ValueError(f"mode {mode!r} with {num_classes} classes needs {expected} logits per query "
                         f"(softmax adds a no-object column), got {logits.shape[-1]}")
    if len(targets) != logits.shape[0]:
        raise ValueError(f"{len(targets)} targets for a batch of {logits.shape[0]}")
    for i, t in enumerate(targets):
        labels, tboxes = t["labels"], t["boxes"]
        if tboxes.shape != (len(labels), 4):
            raise ValueError(f"target {i}: boxes {tuple(tboxes.shape)} do not match labels {tuple(labels.shape)}")
        if tboxes.dtype != torch.float32:
            raise TypeError(f"target {i}: boxes have dtype {tboxes.dtype}; expected torch.float32, the dtype the "
                            "set loss computes in (targets_from_pixels makes them)")
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise TypeError(f"target {i}: labels must be an integer tensor of class indices, got {labels.dtype}")
        if len(labels) > logits.shape[1]:
            raise ValueError(f"target {i} has {len(labels)} objects but there are only {logits.shape[1]} queries")
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"target {i}: labels must lie in [0, {num_classes}), got {labels.tolist()}")
    _check_target_boxes(targets)


def _check_target_boxes(targets: list[dict]) -> None:
    """Target boxes are finite normalised (cx, cy, w, h) with w, h >= 0; one reduction for the batch."""
    if not targets:
        return
    all_boxes = torch.cat([t["boxes"] for t in targets])  # (sum M, 4)
    good = torch.isfinite(all_boxes).all(dim=1) & (all_boxes[:, 2:] >= 0).all(dim=1)
    if bool(good.all()):
        return
    for i, t in enumerate(targets):  # error path: name the image and the first bad box
        bad = ~(torch.isfinite(t["boxes"]).all(dim=1) & (t["boxes"][:, 2:] >= 0).all(dim=1))
        if bad.any():
            raise ValueError(f"target {i} has {int(bad.sum())} boxes that are not finite or have w < 0 or h < 0 "
                             f"(first: {t['boxes'][bad][0].tolist()}); boxes must be normalised (cx, cy, w, h) "
                             "with w, h >= 0 (targets_from_pixels converts xyxy pixels)")


@torch.no_grad()
def hungarian_match(logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict], mode: str = "focal",
                    weights=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One-to-one assignment per image: [(query indices (M,), object indices (M,))].

    logits (B, Q, K[+1]), boxes (B, Q, 4) normalised (cx, cy, w, h); targets from
    :func:`targets_from_pixels`, validated as in :func:`set_loss`. Every object gets exactly
    one query.
    """
    _check_mode(mode)
    num_classes = logits.shape[-1] - 1 if mode == "softmax" else logits.shape[-1]
    _check_outputs(logits, boxes, targets, num_classes, mode)
    return _match(logits, boxes, targets, mode, weights)


@torch.no_grad()
def _match(logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict], mode: str, weights):
    """:func:`hungarian_match` on outputs and targets the caller has validated already."""
    batch, queries = logits.shape[:2]
    sizes = [len(t["labels"]) for t in targets]
    # one cost matrix for all queries against all objects of the batch, moved to the CPU once
    all_labels = torch.cat([t["labels"] for t in targets]).to(logits.device)
    all_boxes = torch.cat([t["boxes"] for t in targets]).to(boxes.device)
    cost = match_cost(logits.flatten(0, 1).float(), boxes.flatten(0, 1), all_labels, all_boxes, mode, weights)
    cost = cost.view(batch, queries, len(all_labels)).cpu()  # (B, Q, sum M)
    matches = []
    for image, image_cost in enumerate(cost.split(sizes, dim=-1)):
        rows, cols = linear_sum_assignment(image_cost[image].numpy())  # this image's queries and objects
        matches.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
    return matches


def _layer_loss(logits, boxes, targets, num_classes, mode, weights, eos_coef, num_boxes):
    """Weighted (class, L1, GIoU) losses of one decoder layer's predictions."""
    w_cls, w_l1, w_giou = weights
    matches = _match(logits, boxes, targets, mode, weights)
    device = logits.device
    batch_index = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(matches)]).to(device)
    query_index = torch.cat([q for q, _ in matches]).to(device)
    matched_labels = torch.cat([t["labels"][o.to(t["labels"].device)] for t, (_, o) in zip(targets, matches)]).to(device)
    matched_boxes = torch.cat([t["boxes"][o.to(t["boxes"].device)] for t, (_, o) in zip(targets, matches)]).to(device)

    logits = logits.float()
    if mode == "softmax":
        classes = torch.full(logits.shape[:2], num_classes, dtype=torch.long, device=device)  # no object
        classes[batch_index, query_index] = matched_labels
        class_weight = torch.ones(num_classes + 1, device=device)
        class_weight[-1] = eos_coef
        loss_cls = F.cross_entropy(logits.transpose(1, 2), classes, weight=class_weight)
    else:
        one_hot = torch.zeros_like(logits)
        one_hot[batch_index, query_index, matched_labels] = 1.0
        loss_cls = sigmoid_focal_loss(logits, one_hot, alpha=0.25, gamma=2.0, reduction="sum") / num_boxes

    pred = boxes[batch_index, query_index].float()  # (sum M, 4)
    loss_l1 = F.l1_loss(pred, matched_boxes, reduction="sum") / num_boxes
    # The official DETR loss takes the diagonal of the pairwise GIoU matrix; kept so, since
    # torchvision's generalized_box_iou_loss adds eps=1e-7 to both denominators (other digits).
    giou = torch.diag(generalized_box_iou(box_convert(pred, "cxcywh", "xyxy"),
                                          box_convert(matched_boxes, "cxcywh", "xyxy")))
    loss_giou = (1 - giou).sum() / num_boxes
    return w_cls * loss_cls, w_l1 * loss_l1, w_giou * loss_giou


def set_loss(outputs: dict, targets: list[dict], num_classes: int, mode: str = "focal", weights=None,
             eos_coef: float = 0.1) -> dict[str, torch.Tensor]:
    """The Hungarian set loss of a DETR-style model.

    outputs: ``{"logits": (B, Q, K[+1]), "boxes": (B, Q, 4) normalised (cx, cy, w, h),
    "aux": [same, one per earlier decoder layer]}``. Returns the weighted terms of the last
    layer (``cls``, ``l1``, ``giou``) and ``aux``, the sum of every earlier layer's terms; the
    training loss is their sum. Normalised by the number of objects in the batch (at least 1).
    """
    _check_mode(mode)
    weights = tuple(weights or SET_WEIGHTS[mode])
    _check_outputs(outputs["logits"], outputs["boxes"], targets, num_classes, mode)
    num_boxes = max(1.0, float(sum(len(t["labels"]) for t in targets)))
    cls, l1, giou = _layer_loss(outputs["logits"], outputs["boxes"], targets, num_classes, mode, weights,
                                eos_coef, num_boxes)
    losses = {"cls": cls, "l1": l1, "giou": giou}
    if outputs.get("aux"):
        losses["aux"] = sum(sum(_layer_loss(a["logits"], a["boxes"], targets, num_classes, mode, weights,
                                            eos_coef, num_boxes)) for a in outputs["aux"])
    return losses
