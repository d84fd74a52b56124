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
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kit.det.assigners import atss_assign
from kit.det.boxes import centerness_target
from kit.det.detector import DenseOutput, Scale, gather_targets, pad_targets
from kit.det.losses import giou_loss, one_hot, sigmoid_focal_loss
from kit.det.validation import check_gt


def conv_gn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv + GroupNorm (8 channels a group) + ReLU, the unit of every head tower."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.GroupNorm(max(1, out_channels // 8), out_channels), nn.ReLU(inplace=True))


def prior_bias(probability: float = 0.01) -> float:
    """Bias that makes a sigmoid output ``probability`` at init (RetinaNet's prior)."""
    return -math.log((1 - probability) / probability)


class ATSSHead(nn.Module):
    """Two towers of ``stacked_convs`` conv-GN-ReLU, then cls (C), box (4) and centre-ness (1)."""

    def __init__(self, num_classes: int, in_channels: int = 64, feat_channels: int = 64,
                 stacked_convs: int = 2, num_levels: int = 3):
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels  # DenseDetector checks in_channels
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
        out = {"cls_probs": [], "cls_logits": [], "distances": [], "centerness_logits": []}
        for x, scale in zip(features, self.scales):
            level = self.level_outputs(x, scale)
            for key in out:
                out[key].append(level[key])
        return out


def atss_targets(out: DenseOutput, gt_boxes: list, gt_labels: list, anchor_scale: float = 4.0, topk: int = 9):
    """ATSS assignment for every image: object index per prior (B, N), -1 for negatives.

    gt_boxes / gt_labels: one (M_i, 4) / (M_i,) tensor per image, validated by
    :func:`kit.det.validation.check_gt` (finite xyxy boxes of ``out.boxes``' dtype, labels in range).
    """
    check_gt(gt_boxes, gt_labels, out.cls_probs.shape[0], out.cls_probs.shape[-1], like=out.boxes)
    return _atss_assignment(out, gt_boxes, anchor_scale, topk)


def _atss_assignment(out: DenseOutput, gt_boxes: list, anchor_scale: float, topk: int) -> torch.Tensor:
    """:func:`atss_targets` on ground truth the caller has validated already."""
    anchors = out.priors.anchor_boxes(anchor_scale)
    return torch.stack([atss_assign(anchors, out.priors.num_per_level, boxes, topk, validate=False)[0]
                        for boxes in gt_boxes])


def atss_loss(out: DenseOutput, gt_boxes: list, gt_labels: list, anchor_scale: float = 4.0,
              topk: int = 9, box_weight: float = 2.0, label_mask: torch.Tensor | None = None,
              positives: dict | None = None, targets_fn=None) -> dict:
    """mmdetection's ATSS loss for a batch. gt_boxes/gt_labels: per-image (M_i, 4) / (M_i,).

    Optional switches (defaults keep the plain ATSS loss):

    * ``label_mask`` (B, C) bool: the classes each image's dataset labels; the classification
      loss is then the dataset-aware focal loss (cross-dataset training,
      :func:`kit.det.cross_dataset.dataset_aware_focal_loss`), which ignores the other classes;
    * ``positives``: a dict filled with the per-positive terms: ``batch``, ``prior`` (P,),
      ``target_boxes`` (P, 4) and ``box_loss`` (P,), each positive's centre-ness-weighted GIoU
      before normalisation (detached; Stitcher's small-object feedback);
    * ``targets_fn(out, gt_boxes, gt_labels) -> assigned (B, N)`` replaces ATSS's assignment
      (HPS-Det's static / dynamic top-k, :mod:`kit.det.hps`).

    The ground truth is validated first (:func:`kit.det.validation.check_gt`): one list per
    image, finite xyxy boxes of ``out.boxes``' dtype, labels in ``[0, C)``; a batch of 0 images
    is refused.
    """
    batch_size, num_classes = out.cls_probs.shape[0], out.cls_probs.shape[-1]
    check_gt(gt_boxes, gt_labels, batch_size, num_classes, like=out.boxes)
    if label_mask is not None and tuple(label_mask.shape) != (batch_size, num_classes):
        raise ValueError(f"label_mask must be (B, C) = ({batch_size}, {num_classes}), one row of labelled "
                         f"classes per image, got {tuple(label_mask.shape)}")
    if targets_fn is not None:
        assigned = targets_fn(out, gt_boxes, gt_labels)  # (B, N)
    else:
        assigned = _atss_assignment(out, gt_boxes, anchor_scale, topk)  # (B, N)
    matched_boxes, labels = gather_targets(assigned, *pad_targets(gt_boxes, gt_labels))
    positive = labels >= 0  # (B, N)
    num_pos = max(1.0, float(positive.sum()))

    cls_target = one_hot(labels.flatten(), out.cls_probs.shape[-1])  # (B*N, C)
    if label_mask is None:
        loss_cls = sigmoid_focal_loss(out.cls_logits.flatten(0, 1).float(), cls_target,
                                      alpha=0.25, gamma=2.0, reduction="sum") / num_pos
    else:
        # imported here so that notebooks without label masks do not depend on that module
        from kit.det.cross_dataset import dataset_aware_focal_loss, prior_label_mask

        loss_cls = dataset_aware_focal_loss(out.cls_logits.flatten(0, 1).float(), cls_target,
                                            prior_label_mask(label_mask, labels.shape[1]))

    batch, prior = torch.nonzero(positive, as_tuple=True)  # the P positives
    target = matched_boxes[batch, prior]  # (P, 4)
    centerness = centerness_target(out.priors.points[prior], target)  # (P,)
    box_per_positive = giou_loss(out.boxes[batch, prior], target) * centerness  # (P,)
    loss_box = box_weight * box_per_positive.sum() / centerness.sum().clamp(min=1.0)
    if positives is not None:  # per-positive terms for callers that need them (Stitcher's feedback)
        positives.update(batch=batch, prior=prior, target_boxes=target,
                         box_loss=box_per_positive.detach())
    loss_centerness = F.binary_cross_entropy_with_logits(
        out.centerness_logits[batch, prior].float(), centerness, reduction="sum") / num_pos
    return {"cls": loss_cls, "box": loss_box, "centerness": loss_centerness}
