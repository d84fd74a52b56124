"""The ATSS detector head and loss: the baseline of the dense-detection chapter.

ATSS (Zhang et al., CVPR 2020, arXiv 1912.02424) keeps the classic head — separate
classification and regression towers — and changes only the label assignment
(:func:`kit.det.assigners.atss_assign`). We use its anchor-free form: one point per
location, boxes as ltrb distances (``exp`` then a per-level :class:`Scale`, in stride units),
a centre-ness branch on the regression tower, and mmdetection's ATSS losses:

* classification: sigmoid focal loss on logits (alpha 0.25, gamma 2), / number of positives;
* boxes: GIoU weighted by each positive's centre-ness target (weight 2.0),
  / sum of those targets;
* centre-ness: BCE with logits against the centre-ness target, / number of positives.

At test time the score is ``sigmoid(cls) * sigmoid(centerness)``.

The head's settings (``anchor_scale``, ``topk``) are attributes of :class:`ATSSHead`, which its
:meth:`ATSSHead.loss` passes on. :func:`atss_loss_terms` returns the terms before they are
summed, for the papers that build on ATSS's loss (cross-dataset training masks the
classification term, Stitcher reads the per-positive box losses, HPS-Det passes its own
assignment); those live in their own modules.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import Conv2dNormActivation, sigmoid_focal_loss

from kit.det.assigners import Assignment, atss_assign
from kit.det.boxes import centerness_target
from kit.det.detector import DenseHead, DenseOutput, Scale, gather_targets, pad_targets
from kit.det.losses import giou_loss, one_hot
from kit.det.validation import check_gt, check_shape

ANCHOR_SCALE = 4.0  # a point prior's anchor box is a square of side anchor_scale * stride
TOPK = 9  # ATSS's candidates per level and object
BOX_WEIGHT = 2.0  # weight of the GIoU term (mmdetection's ATSS config)


def conv_gn_relu(in_channels: int, out_channels: int) -> Conv2dNormActivation:
    """3x3 conv + GroupNorm (8 channels a group) + ReLU, the unit of every head tower."""
    return Conv2dNormActivation(in_channels, out_channels, kernel_size=3,
                                norm_layer=lambda channels: nn.GroupNorm(max(1, channels // 8), channels))


def prior_bias(probability: float = 0.01) -> float:
    """Bias that makes a sigmoid output ``probability`` at init (RetinaNet's prior)."""
    return -math.log((1 - probability) / probability)


class ATSSHead(DenseHead):
    """Two towers of ``stacked_convs`` conv-GN-ReLU, then cls (C), box (4) and centre-ness (1).

    ``anchor_scale`` and ``topk`` configure the assignment that :meth:`loss` uses.
    """

    def __init__(self, num_classes: int, in_channels: int = 64, feat_channels: int = 64,
                 stacked_convs: int = 2, num_levels: int = 3, anchor_scale: float = ANCHOR_SCALE,
                 topk: int = TOPK):
        super().__init__(num_classes, in_channels)
        self.anchor_scale, self.topk = anchor_scale, topk
        self.cls_tower = nn.Sequential(*[conv_gn_relu(in_channels if i == 0 else feat_channels, feat_channels)
                                         for i in range(stacked_convs)])
        self.reg_tower = nn.Sequential(*[conv_gn_relu(in_channels if i == 0 else feat_channels, feat_channels)
                                         for i in range(stacked_convs)])
        self.cls_conv = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.reg_conv = nn.Conv2d(feat_channels, 4, 3, padding=1)
        self.centerness_conv = nn.Conv2d(feat_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_conv.bias, prior_bias(0.01))

    def decode_distances(self, raw: torch.Tensor, scale: nn.Module) -> torch.Tensor:
        """Box-side distances in strides from the regression conv's output: ``scale * exp(raw)``."""
        return scale(raw.exp()).float()  # (B, 4, H, W)

    def level_outputs(self, x: torch.Tensor, scale: nn.Module) -> dict:
        """One level's predictions, plus the two towers' features (for heads that add branches)."""
        cls_feat, reg_feat = self.cls_tower(x), self.reg_tower(x)
        logits = self.cls_conv(cls_feat)  # (B, C, H, W)
        return {"cls_logits": logits, "cls_probs": logits.sigmoid(),
                "distances": self.decode_distances(self.reg_conv(reg_feat), scale),  # (B, 4, H, W)
                "centerness_logits": self.centerness_conv(reg_feat),  # (B, 1, H, W)
                "cls_feat": cls_feat, "reg_feat": reg_feat}

    def forward(self, features, level_points, strides) -> dict:
        """Per level: ``cls_probs`` / ``cls_logits`` (B, C, H, W), ``distances`` (B, 4, H, W) ltrb
        in strides, ``centerness_logits`` (B, 1, H, W); features [(B, in_channels, H, W)]."""
        out = {"cls_probs": [], "cls_logits": [], "distances": [], "centerness_logits": []}
        for x, scale in zip(features, self.scales):
            level = self.level_outputs(x, scale)
            for key in out:
                out[key].append(level[key])
        return out

    def loss(self, out: DenseOutput, gt_boxes: list, gt_labels: list, **options) -> dict[str, torch.Tensor]:
        """:func:`atss_loss` with this head's ``anchor_scale`` and ``topk`` (options: ``box_weight``)."""
        return atss_loss(out, gt_boxes, gt_labels, anchor_scale=self.anchor_scale, topk=self.topk, **options)


def atss_targets(out: DenseOutput, gt_boxes: list, anchor_scale: float = ANCHOR_SCALE, topk: int = TOPK,
                 *, validate: bool = True) -> Assignment:
    """ATSS's assignment for every image of a batch: an :class:`Assignment` of (B, N) tensors.

    gt_boxes: one (M_i, 4) xyxy tensor per image, validated (:func:`kit.det.validation.check_gt`)
    unless the caller has done so (``validate=False``).
    """
    if validate:
        check_gt(gt_boxes, None, out.cls_probs.shape[0], like=out.boxes)
    anchors = out.priors.anchor_boxes(anchor_scale)  # (N, 4)
    per_image = [atss_assign(anchors, out.priors.num_per_level, boxes, topk, validate=False) for boxes in gt_boxes]
    return Assignment(torch.stack([a.gt_index for a in per_image]), torch.stack([a.overlap for a in per_image]))


@dataclass
class ATSSLossTerms:
    """ATSS's three losses before they are summed and normalised, P positives over the batch."""

    cls_logits: torch.Tensor  # (B*N, C) float32, priors in the order of flatten(0, 1)
    cls_targets: torch.Tensor  # (B*N, C) one-hot of the assigned class, background rows zero
    num_pos: float  # max(1, P): the normaliser of the classification and centre-ness losses
    batch: torch.Tensor  # (P,) image of each positive
    prior: torch.Tensor  # (P,) prior index of each positive
    target_boxes: torch.Tensor  # (P, 4) xyxy px, the box of each positive's object
    centerness_targets: torch.Tensor  # (P,)
    box_losses: torch.Tensor  # (P,) GIoU loss x centre-ness target
    centerness_logits: torch.Tensor  # (P,) float32

    def cls_loss(self) -> torch.Tensor:
        """Sigmoid focal loss (alpha 0.25, gamma 2) summed over priors and classes, / num_pos."""
        return sigmoid_focal_loss(self.cls_logits, self.cls_targets, alpha=0.25, gamma=2.0,
                                  reduction="sum") / self.num_pos

    def box_loss(self, box_weight: float = BOX_WEIGHT) -> torch.Tensor:
        """``box_weight`` x the centre-ness-weighted GIoU losses / the sum of the weights."""
        return box_weight * self.box_losses.sum() / self.centerness_targets.sum().clamp(min=1.0)

    def centerness_loss(self) -> torch.Tensor:
        """BCE with logits against the centre-ness targets, summed over positives, / num_pos."""
        return F.binary_cross_entropy_with_logits(self.centerness_logits, self.centerness_targets,
                                                  reduction="sum") / self.num_pos

    def losses(self, box_weight: float = BOX_WEIGHT) -> dict[str, torch.Tensor]:
        return {"cls": self.cls_loss(), "box": self.box_loss(box_weight), "centerness": self.centerness_loss()}


def atss_loss_terms(out: DenseOutput, gt_boxes: list, gt_labels: list, assigned: torch.Tensor | None = None,
                    anchor_scale: float = ANCHOR_SCALE, topk: int = TOPK) -> ATSSLossTerms:
    """The terms of ATSS's loss for a batch, for the assignment ``assigned`` (B, N) (object index
    per prior, -1 background; default: ATSS's own, :func:`atss_targets`).

    gt_boxes / gt_labels: one (M_i, 4) / (M_i,) tensor per image, validated first
    (:func:`kit.det.validation.check_gt`: finite xyxy boxes of ``out.boxes``' dtype, labels in
    ``[0, C)``, at least one image).
    """
    batch_size, num_priors, num_classes = out.cls_probs.shape
    check_gt(gt_boxes, gt_labels, batch_size, num_classes, like=out.boxes)
    if assigned is None:
        assigned = atss_targets(out, gt_boxes, anchor_scale, topk, validate=False).gt_index
    check_shape("assigned", assigned, (batch_size, num_priors))
    matched_boxes, labels = gather_targets(assigned, *pad_targets(gt_boxes, gt_labels))  # (B, N, 4), (B, N)
    batch, prior = torch.nonzero(labels >= 0, as_tuple=True)  # the P positives
    target_boxes = matched_boxes[batch, prior]  # (P, 4)
    centerness = centerness_target(out.priors.points[prior], target_boxes)  # (P,)
    return ATSSLossTerms(
        cls_logits=out.cls_logits.flatten(0, 1).float(),  # (B*N, C)
        cls_targets=one_hot(labels.flatten(), num_classes),  # (B*N, C)
        num_pos=max(1.0, float(batch.numel())),
        batch=batch, prior=prior, target_boxes=target_boxes, centerness_targets=centerness,
        box_losses=giou_loss(out.boxes[batch, prior], target_boxes) * centerness,  # (P,)
        centerness_logits=out.centerness_logits[batch, prior].float())  # (P,)


def atss_loss(out: DenseOutput, gt_boxes: list, gt_labels: list, anchor_scale: float = ANCHOR_SCALE,
              topk: int = TOPK, box_weight: float = BOX_WEIGHT) -> dict[str, torch.Tensor]:
    """mmdetection's ATSS loss for a batch: ``{"cls", "box", "centerness"}``.

    gt_boxes / gt_labels: per image (M_i, 4) xyxy px / (M_i,), validated as in
    :func:`atss_loss_terms`; a batch of 0 images is refused.
    """
    return atss_loss_terms(out, gt_boxes, gt_labels, anchor_scale=anchor_scale, topk=topk).losses(box_weight)
