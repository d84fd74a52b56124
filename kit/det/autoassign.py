"""AutoAssign: differentiable label assignment (Zhu et al., arXiv 2007.03496).

No prior is declared positive or negative. Every location inside an object's box is a
candidate for that object on *every* FPN level, and the loss weighs the candidates softly:

**Center weighting** (:class:`CenterPrior`): a Gaussian per class over the offset of a location
from the box centre, in units of the level's stride, ``d = (p - c) / s``:

.. math:: G(\\vec d) = \\prod_{k \\in \\{x, y\\}} \\exp\\Big(-\\frac{(d_k - \\mu_{c,k})^2}{2\\sigma_{c,k}^2}\\Big)

with ``mu`` (C, 2) starting at 0 and ``sigma`` (C, 2) at 1, both learned, so a class whose mass
sits off-centre (a triangle is wide at the top) can move its prior there.

**Confidence weighting.** With the joint classification confidence
``P_cls = sigmoid(cls) * sigmoid(obj)`` (``obj`` is the *ImpObj* branch, an implicit objectness
on the regression tower) and the localisation confidence ``P_loc = exp(-5 * GIoU loss)``:

* positives: ``C = exp(3 * P_cls * P_loc)``, ``w+_i = C_i G_i / sum_j C_j G_j`` over the object's
  inside locations, and ``L+ = -log(sum_i w+_i P_cls_i P_loc_i)`` per object;
* negatives: ``w-_i = 1 - f(1 / (1 - IoU_i))`` inside the box (``f`` a min-max normalisation over
  the object's locations, IoU the best IoU of the location's predicted box with any object),
  ``w- = 1`` elsewhere, and ``L- = sum (P_cls w-)^2 BCE(P_cls w-, 0)`` over locations x classes.

The total is ``0.25 L+ / N_obj + 0.75 L- / sum G + 0.75 mean_img(N_obj / sum G)`` (the last,
the centre-prior loss, keeps the prior from collapsing). Everything follows the official
cvpods code (``Megvii-BaseDetection/AutoAssign``, ``auto_assign.py``) and mmdetection's port
(``AutoAssignHead``), including: locations strictly inside a box (``min(l, t, r, b) > 0``) are
candidates; the confidence weight ``C`` is *not* detached; box distances are
``relu(scale * x) * stride`` with the regression bias at 4.0; the class prior bias is 0.02.

Deviations, both switchable or stated: ``force_topk`` (mmdetection's option, off in the official
code) gives an object whose box contains no location its ``topk`` highest-prior locations, which
matters for the few-pixel objects of small images; and the points carry the detector's
half-stride offset (the official code has none), so the ATSS baseline sees the same priors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kit.det.atss import ATSSHead, prior_bias
from kit.det.boxes import box_iou, centers, generalized_box_iou, points_inside
from kit.det.detector import DenseOutput
from kit.det.validation import check_gt, check_gt_boxes

EPS = 1e-12  # the official code's clamp


class CenterPrior(nn.Module):
    """The learnable per-class Gaussian prior G over a location's offset from the box centre."""

    def __init__(self, num_classes: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.mean = nn.Parameter(torch.zeros(num_classes, 2))  # mu, (dx, dy) in strides
        self.sigma = nn.Parameter(torch.ones(num_classes, 2))

    def forward(self, points: torch.Tensor, strides: torch.Tensor, gt_boxes: torch.Tensor,
                gt_labels: torch.Tensor) -> torch.Tensor:
        """G (N, M) for points (N, 2) xy px, strides (N,), gt_boxes (M, 4), gt_labels (M,)."""
        if points.shape[-1] != 2 or strides.shape != points.shape[:1]:
            raise ValueError(f"need points (N, 2) and strides (N,), got {tuple(points.shape)} and {tuple(strides.shape)}")
        if gt_labels.numel() and (gt_labels.min() < 0 or gt_labels.max() >= self.mean.shape[0]):
            raise ValueError(f"gt_labels must lie in [0, {self.mean.shape[0]}), got {gt_labels.tolist()}")
        offset = (points[:, None, :] - centers(gt_boxes)[None]) / strides[:, None, None]  # (N, M, 2)
        z = (offset - self.mean[gt_labels][None]) / self.sigma[gt_labels][None]
        return torch.exp(-z.pow(2) / 2).prod(dim=-1)  # (N, M)


class AutoAssignHead(ATSSHead):
    """The ATSS/FCOS towers with AutoAssign's outputs: cls (C), ltrb (4, relu) and ImpObj (1).

    The ImpObj conv sits on the regression tower where ATSS has centre-ness, so it is that conv
    (``objectness_conv``); the head returns its output as ``objectness_logits``, and the test
    score ``cls * sigmoid(obj)`` (:meth:`DenseOutput.detection_scores`) is the official one.
    The head owns the learned :class:`CenterPrior` and the loss settings ``force_topk`` /
    ``topk`` that :meth:`loss` passes to :func:`autoassign_loss`.
    """

    def __init__(self, num_classes: int, in_channels: int = 64, feat_channels: int = 64,
                 stacked_convs: int = 2, num_levels: int = 3, force_topk: bool = False, topk: int = 9):
        super().__init__(num_classes, in_channels, feat_channels, stacked_convs, num_levels)
        self.force_topk, self.topk = force_topk, topk  # candidates of an object with no location inside
        self.center_prior = CenterPrior(num_classes)
        nn.init.constant_(self.cls_conv.bias, prior_bias(0.02))
        nn.init.constant_(self.reg_conv.bias, 4.0)  # relu(4) = 4 strides to every side at start

    @property
    def objectness_conv(self) -> nn.Conv2d:
        return self.centerness_conv

    def decode_distances(self, raw: torch.Tensor, scale: nn.Module) -> torch.Tensor:
        """``relu(scale * raw)`` strides (the official head), not ATSS's ``exp``."""
        return F.relu(scale(raw)).float()  # (B, 4, H, W)

    def forward(self, features, level_points, strides) -> dict:
        """ATSS's per-level outputs, with the ImpObj logits (B, 1, H, W) as ``objectness_logits``."""
        out = super().forward(features, level_points, strides)
        out["objectness_logits"] = out.pop("centerness_logits")
        return out

    def loss(self, out: DenseOutput, gt_boxes: list, gt_labels: list) -> dict:
        """:func:`autoassign_loss` with this head's centre prior and settings."""
        return autoassign_loss(out, gt_boxes, gt_labels, self.center_prior, self.force_topk, self.topk)

    def image_weights(self, out: DenseOutput, image: int, gt_boxes: torch.Tensor, gt_labels: torch.Tensor) -> dict:
        """:func:`autoassign_weights` of one image of ``out`` (its (M, 4) boxes and (M,) labels), with
        this head's centre prior and settings: what the loss weighs, for figures and diagnostics."""
        return autoassign_weights(out.cls_probs[image], out.objectness_logits[image].sigmoid(), out.boxes[image],
                                  out.priors.points, out.priors.strides, gt_boxes, gt_labels, self.center_prior,
                                  self.force_topk, self.topk)


def inside_mask(points: torch.Tensor, gt_boxes: torch.Tensor, prior: torch.Tensor,
                force_topk: bool = False, topk: int = 9) -> torch.Tensor:
    """(N, M) candidates: points strictly inside each box; with ``force_topk`` an object with no
    inside point takes its ``topk`` highest-prior points instead (mmdetection's ``CenterPrior``)."""
    inside = points_inside(points, gt_boxes, margin=0.0)  # (N, M), min(l, t, r, b) > 0
    if force_topk and gt_boxes.shape[0]:
        empty = torch.nonzero(~inside.any(dim=0)).flatten()
        if empty.numel():
            nearest = prior[:, empty].topk(min(topk, prior.shape[0]), dim=0).indices  # (k, E)
            inside[nearest, empty.expand_as(nearest)] = True
    return inside


def autoassign_weights(cls_probs: torch.Tensor, obj_probs: torch.Tensor, pred_boxes: torch.Tensor,
                       points: torch.Tensor, strides: torch.Tensor, gt_boxes: torch.Tensor,
                       gt_labels: torch.Tensor, center_prior: CenterPrior, force_topk: bool = False,
                       topk: int = 9, reg_weight: float = 5.0, confidence_scale: float = 3.0) -> dict:
    """Every weight AutoAssign computes for one image.

    cls_probs (N, C) and obj_probs (N,) probabilities; pred_boxes (N, 4) xyxy px; points (N, 2);
    strides (N,); gt_boxes (M, 4); gt_labels (M,). Returns a dict of tensors:
    ``inside`` (N, M) bool, ``prior`` G (N, M) (0 outside), ``p_cls``, ``p_loc``, ``p_pos``,
    ``confidence`` C, ``pos_weight`` w+ (all (N, M)), ``neg_weight`` w- (N, C) and ``iou`` (N,).
    """
    n, num_classes = cls_probs.shape
    if obj_probs.shape != (n,) or pred_boxes.shape != (n, 4) or points.shape != (n, 2):
        raise ValueError(f"need obj_probs ({n},), pred_boxes ({n}, 4), points ({n}, 2); got "
                         f"{tuple(obj_probs.shape)}, {tuple(pred_boxes.shape)}, {tuple(points.shape)}")
    check_gt_boxes(gt_boxes, gt_labels, num_classes, like=pred_boxes)
    prior = center_prior(points, strides, gt_boxes, gt_labels)  # (N, M)
    inside = inside_mask(points, gt_boxes, prior.detach(), force_topk, topk)
    prior = prior * inside

    # Confidence: P_cls of each object's class, P_loc from the weighted GIoU loss.
    p_cls = (cls_probs * obj_probs[:, None])[:, gt_labels]  # (N, M)
    p_loc = torch.exp(-reg_weight * (1 - generalized_box_iou(pred_boxes, gt_boxes)))  # (N, M)
    p_pos = p_cls * p_loc
    confidence = torch.exp(confidence_scale * p_pos)
    weighted = confidence * prior
    pos_weight = weighted / weighted.sum(dim=0, keepdim=True).clamp(min=EPS)  # w+, (N, M)

    # Negatives: 1 - normalised 1/(1 - IoU) inside each box, 1 elsewhere; written per object in
    # index order, so a location inside two objects of one class keeps the later one's weight.
    with torch.no_grad():
        iou = box_iou(pred_boxes, gt_boxes).max(dim=1).values if gt_boxes.shape[0] else pred_boxes.new_zeros(n)
        t = (1 / (1 - iou).clamp(min=EPS))[:, None].expand(n, gt_boxes.shape[0])  # (N, M)
        t_min = torch.where(inside, t, torch.full_like(t, float("inf"))).min(dim=0).values
        t_max = torch.where(inside, t, torch.full_like(t, float("-inf"))).max(dim=0).values
        normalised = (t - t_min + EPS) / (t_max - t_min + EPS)  # (N, M), meaningful inside only
        neg_weight = cls_probs.new_ones(n, num_classes)
        for m, label in enumerate(gt_labels.tolist()):
            neg_weight[inside[:, m], label] = 1 - normalised[inside[:, m], m]
    return {"inside": inside, "prior": prior, "p_cls": p_cls, "p_loc": p_loc, "p_pos": p_pos,
            "confidence": confidence, "pos_weight": pos_weight, "neg_weight": neg_weight, "iou": iou}


@torch.autocast("cuda", enabled=False)
def autoassign_loss(out: DenseOutput, gt_boxes: list, gt_labels: list, center_prior: CenterPrior,
                    force_topk: bool = False, topk: int = 9, pos_loss_weight: float = 0.25,
                    neg_loss_weight: float = 0.75, center_loss_weight: float = 0.75) -> dict:
    """AutoAssign's loss for a batch; gt_boxes / gt_labels per image (M_i, 4) / (M_i,).

    ``out.objectness_logits`` (B, N) are the ImpObj logits (:class:`AutoAssignHead`). The
    ground truth is validated first (:func:`kit.det.validation.check_gt`).
    """
    if out.objectness_logits is None:
        raise ValueError("AutoAssign needs the ImpObj logits in out.objectness_logits (use AutoAssignHead)")
    check_gt(gt_boxes, gt_labels, out.cls_probs.shape[0], out.cls_probs.shape[-1], like=out.boxes)
    cls_probs, obj_probs = out.cls_probs.float(), out.objectness_logits.float().sigmoid()  # (B, N, C), (B, N)
    pos_losses, neg_losses, center_losses, prior_mass = [], [], [], []
    for b, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels)):
        w = autoassign_weights(cls_probs[b], obj_probs[b], out.boxes[b].float(), out.priors.points,
                               out.priors.strides, boxes.float(), labels, center_prior, force_topk, topk)
        # L+ per object: BCE(sum_i w+ P_pos, 1) = -log(...), the log clamped at -100 as in torch.
        bag = (w["p_pos"] * w["pos_weight"]).sum(dim=0)  # (M,)
        pos_losses.append(F.binary_cross_entropy(bag, torch.ones_like(bag), reduction="sum"))
        negative = cls_probs[b] * obj_probs[b][:, None] * w["neg_weight"]  # (N, C)
        neg_losses.append((negative.pow(2) * F.binary_cross_entropy(
            negative, torch.zeros_like(negative), reduction="none")).sum())
        mass = w["prior"].sum()  # sum of G over the candidates
        prior_mass.append(mass.detach())
        center_losses.append(len(labels) / mass.clamp(min=EPS) if w["inside"].any() else mass * 0)
    num_objects = max(1, sum(len(labels) for labels in gt_labels))
    return {"pos": pos_loss_weight * torch.stack(pos_losses).sum() / num_objects,
            "neg": neg_loss_weight * torch.stack(neg_losses).sum() / torch.stack(prior_mass).sum().clamp(min=1.0),
            "center": center_loss_weight * torch.stack(center_losses).mean()}
