"""BorderDet: a border-refinement stage on a dense detector (Qiu et al., ECCV 2020, arXiv 2007.11056).

A dense detector predicts, at each location, a class score and a box from the feature of
that one point. BorderDet adds a second, cheap stage at every location:

1. the first stage's box ``B0`` (detached) is taken to the feature map of its level;
2. a :class:`BorderBranch` on each tower reads, with :func:`kit.ops.border_align.border_align`,
   the strongest feature along each of the four sides of ``B0`` (from a 4C-channel map, one
   C-block per side), concatenates it with a 1x1 "current point" feature and fuses them;
3. from these border features it predicts a second classification ``border_cls`` and a
   refinement ``delta`` of ``B0``.

**Targets.** A location is a border positive when its ``B0`` has IoU >= 0.6 with an object
(the object of highest IoU); its class is that object's, and its box target is
``(G - B0) / (0.5 * wh(B0))`` per coordinate. **Losses:** the first stage's own losses, plus a
sigmoid focal loss (0.25, 2) on ``border_cls`` and an L1 loss (smooth-L1 with beta 0) on
``delta``, both divided by the number of border positives. **Test:** the box is
``B0 + 0.5 * wh(B0) * delta`` and the score ``sqrt(sqrt(cls * ctr) * border_cls)``.

Everything follows the official code (``Megvii-BaseDetection/BorderDet``, ``borderdet.py``:
``BorderHead``, ``BorderBranch``, ``get_ground_truth``, ``losses``, ``inference_single_image``):
InstanceNorm (not GroupNorm) in the branch, boxes divided by the stride and clamped to the map
before BorderAlign, border channels 256 / 128 for the cls / reg branches at 256 tower channels
(here 64 / 32 at 64), ``pool_size = 10``. Deviations: the first stage is the kit's ATSS
(anchor-free, the chapter's baseline) rather than FCOS, so the coarse boxes come from the same
detector as the baseline; our points sit at cell centres, so a box at ``X`` px is at
``X / stride - 0.5`` on the feature map (pixel centres at integers, as BorderAlign expects);
and the score threshold is applied to the final score rather than to ``sqrt(cls * ctr)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import Conv2dNormActivation

from kit.det.atss import ATSSHead, prior_bias
from kit.det.boxes import box_iou, distance2bbox
from kit.det.detector import DenseOutput
from kit.det.losses import one_hot, sigmoid_focal_loss
from kit.det.validation import check_gt
from kit.ops.border_align import border_align

BBOX_STD = 0.5  # the refinement's unit: a delta of 1 moves a side by half the coarse box's width / height
IOU_THRESHOLD = 0.6  # a location is a border positive when its coarse box has this IoU with an object


class BorderBranch(nn.Module):
    """Border features of a tower's feature map: (B, F, H, W) and boxes (B, HW, 4) -> (B, F, H, W)."""

    def __init__(self, in_channels: int, border_channels: int, pool_size: int = 10):
        super().__init__()
        self.pool_size = pool_size
        # 1x1 conv (with bias) + InstanceNorm + ReLU, as the official branch
        conv_in_relu = partial(Conv2dNormActivation, kernel_size=1, norm_layer=nn.InstanceNorm2d, bias=True)
        self.current_point = conv_in_relu(in_channels, border_channels)  # the location's own feature, C channels
        self.border_features = conv_in_relu(in_channels, 4 * border_channels)  # top, left, bottom, right blocks
        self.fuse = Conv2dNormActivation(5 * border_channels, in_channels, kernel_size=1, norm_layer=None)

    def pooled(self, feature: torch.Tensor, boxes: torch.Tensor, return_argmax: bool = False):
        """BorderAlign of the 4C border map: (B, C, HW, 4) (and the argmax sample per side)."""
        return border_align(self.border_features(feature), boxes, self.pool_size, return_argmax)

    def forward(self, feature: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        b, _, h, w = feature.shape
        border = self.pooled(feature, boxes)  # (B, C, HW, 4)
        border = border.permute(0, 3, 1, 2).reshape(b, -1, h, w)  # (B, 4C, H, W), side-major
        return self.fuse(torch.cat([border, self.current_point(feature)], dim=1))


def feature_map_boxes(boxes: torch.Tensor, stride: float, height: int, width: int) -> torch.Tensor:
    """Pixel boxes (..., 4) -> the feature map's pixel frame, clamped to the map (BorderDet's
    ``compute_border``). Points sit at cell centres ``(j + 0.5) * stride``, so ``x -> x / s - 0.5``."""
    scaled = boxes / stride - 0.5
    limits = scaled.new_tensor([width - 1, height - 1, width - 1, height - 1])
    return torch.minimum(scaled.clamp(min=0), limits)


def refine_boxes(coarse: torch.Tensor, deltas: torch.Tensor, bbox_std: float = BBOX_STD) -> torch.Tensor:
    """``B0 + bbox_std * wh(B0) * delta``: coarse (..., 4) xyxy, deltas (..., 4) -> refined (..., 4)."""
    wh = coarse[..., 2:] - coarse[..., :2]  # (..., 2) as (w, h)
    return coarse + deltas * bbox_std * torch.cat([wh, wh], dim=-1)


@dataclass
class BorderOutput(DenseOutput):
    """:class:`DenseOutput` of the first stage, plus the border stage's predictions:
    border_cls_logits (B, N, C), the second classification, and border_deltas (B, N, 4), the
    refinement of each coarse box in units of ``bbox_std * wh(B0)``."""

    border_cls_logits: torch.Tensor | None = None
    border_deltas: torch.Tensor | None = None


class BorderHead(ATSSHead):
    """The ATSS head plus BorderDet's border branches and second-stage predictions.

    Its settings live here: ``bbox_std`` (the refinement's unit, read by :meth:`loss` and
    :meth:`test_outputs`), ``iou_threshold`` (a border positive's IoU), and the switches
    ``rescore`` and ``refine`` of the two test-time uses of the border stage (for the ablation:
    the same trained model with either turned off). ``detach_towers`` (not in the paper, off by
    default) stops the border losses' gradient at the towers' outputs, so that the border stage
    cannot change the first stage's features.
    """

    output_type = BorderOutput

    def __init__(self, num_classes: int, in_channels: int = 64, feat_channels: int = 64,
                 stacked_convs: int = 2, num_levels: int = 3, border_channels: tuple = (64, 32),
                 pool_size: int = 10, bbox_std: float = BBOX_STD, iou_threshold: float = IOU_THRESHOLD,
                 detach_towers: bool = False):
        super().__init__(num_classes, in_channels, feat_channels, stacked_convs, num_levels)
        self.bbox_std, self.iou_threshold, self.detach_towers = bbox_std, iou_threshold, detach_towers
        self.rescore, self.refine = True, True
        self.border_cls_branch = BorderBranch(feat_channels, border_channels[0], pool_size)
        self.border_reg_branch = BorderBranch(feat_channels, border_channels[1], pool_size)
        self.border_cls_conv = nn.Conv2d(feat_channels, num_classes, 1)
        self.border_reg_conv = nn.Conv2d(feat_channels, 4, 1)
        for branch in (self.border_cls_branch, self.border_reg_branch, self.border_cls_conv, self.border_reg_conv):
            for module in branch.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.normal_(module.weight, std=0.01)
                    nn.init.zeros_(module.bias)
        nn.init.constant_(self.border_cls_conv.bias, prior_bias(0.01))

    def forward(self, features, level_points, strides, with_maps: bool = False) -> dict:
        """Per level: ATSS's outputs, ``border_cls_logits`` (B, C, H, W) and ``border_deltas``
        (B, 4, H, W); with ``with_maps`` also ``align_boxes`` (B, 4, H, W), the coarse boxes on the
        feature map as BorderAlign read them."""
        names = ("cls_probs", "cls_logits", "distances", "centerness_logits", "border_cls_logits",
                 "border_deltas") + (("align_boxes",) if with_maps else ())
        out = {name: [] for name in names}
        for x, points, stride, scale in zip(features, level_points, strides, self.scales):
            b, _, h, w = x.shape
            level = self.level_outputs(x, scale)  # the ATSS predictions of this level
            cls_feat, reg_feat, distances = level["cls_feat"], level["reg_feat"], level["distances"]
            for key in ("cls_logits", "cls_probs", "distances", "centerness_logits"):
                out[key].append(level[key])

            # The coarse box B0 of every location, detached, on this level's feature map.
            with torch.no_grad():
                ltrb = distances.detach().flatten(2).transpose(1, 2)  # (B, HW, 4)
                coarse = distance2bbox(points / stride, ltrb) * stride  # (B, HW, 4) px
                boxes = feature_map_boxes(coarse, stride, h, w)
            if self.detach_towers:
                cls_feat, reg_feat = cls_feat.detach(), reg_feat.detach()
            border_cls = self.border_cls_branch(cls_feat, boxes)  # (B, F, H, W)
            border_reg = self.border_reg_branch(reg_feat, boxes)
            out["border_cls_logits"].append(self.border_cls_conv(border_cls))  # (B, C, H, W)
            out["border_deltas"].append(self.border_reg_conv(border_reg).float())  # (B, 4, H, W)
            if with_maps:
                out["align_boxes"].append(boxes.transpose(1, 2).reshape(b, 4, h, w))
        return out

    def refined_boxes(self, out: BorderOutput) -> torch.Tensor:
        """The refined boxes (B, N, 4) px: :func:`refine_boxes` of the coarse boxes with this head's ``bbox_std``."""
        return refine_boxes(out.boxes, out.border_deltas, self.bbox_std)

    def test_outputs(self, out: BorderOutput):
        """Scores (B, N, C) and boxes (B, N, 4) used at test time (see :meth:`DenseDetector.detect`)."""
        scores, boxes = out.detection_scores(), out.boxes
        if self.rescore:
            scores = (scores.sqrt() * out.border_cls_logits.sigmoid()).sqrt()
        if self.refine:
            boxes = self.refined_boxes(out)
        return scores, boxes

    def loss(self, out: BorderOutput, gt_boxes: list, gt_labels: list) -> dict:
        """The first stage's ATSS losses, then :func:`border_losses` with this head's settings."""
        if not isinstance(out, BorderOutput):
            raise ValueError("BorderHead.loss needs the border outputs of BorderHead (a BorderOutput)")
        return {**super().loss(out, gt_boxes, gt_labels),
                **border_losses(out, gt_boxes, gt_labels, self.iou_threshold, self.bbox_std)}


@torch.no_grad()
def border_targets(coarse: torch.Tensor, gt_boxes: list, gt_labels: list, iou_threshold: float = IOU_THRESHOLD,
                   bbox_std: float = BBOX_STD):
    """Border labels (B, N) (-1 background) and box targets (B, N, 4) (0 for background).

    coarse: (B, N, 4) first-stage boxes in px. A location is positive when its coarse box has
    IoU >= ``iou_threshold`` with an object; it takes the object of highest IoU. The ground truth
    (one list per image, of ``coarse``'s dtype) is validated by :func:`kit.det.validation.check_gt`.
    """
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if coarse.dim() != 3 or coarse.shape[-1] != 4:
        raise ValueError(f"coarse must be (B, N, 4) xyxy boxes, got {tuple(coarse.shape)}")
    check_gt(gt_boxes, gt_labels, coarse.shape[0], like=coarse)
    labels = torch.full(coarse.shape[:2], -1, dtype=torch.long, device=coarse.device)
    targets = torch.zeros_like(coarse)
    for b, (boxes, classes) in enumerate(zip(gt_boxes, gt_labels)):
        if boxes.shape[0] == 0:
            continue
        best_iou, best = box_iou(coarse[b], boxes.to(coarse.dtype)).max(dim=1)  # (N,)
        positive = best_iou >= iou_threshold
        labels[b, positive] = classes[best[positive]]
        matched, b0 = boxes[best[positive]].to(coarse.dtype), coarse[b, positive]
        wh = b0[:, 2:] - b0[:, :2]
        targets[b, positive] = (matched - b0) / (bbox_std * torch.cat([wh, wh], dim=1))
    return labels, targets


def border_losses(out: BorderOutput, gt_boxes: list, gt_labels: list, iou_threshold: float = IOU_THRESHOLD,
                  bbox_std: float = BBOX_STD) -> dict:
    """The border stage's losses: a sigmoid focal loss (0.25, 2) on ``border_cls_logits`` and an L1
    loss on ``border_deltas`` against :func:`border_targets`, both / the number of border positives."""
    if not isinstance(out, BorderOutput):
        raise ValueError("border_losses needs the border outputs of BorderHead (a BorderOutput)")
    logits, deltas = out.border_cls_logits.float(), out.border_deltas.float()  # (B, N, C), (B, N, 4)
    labels, targets = border_targets(out.boxes.detach().float(), gt_boxes, gt_labels, iou_threshold, bbox_std)
    positive = labels >= 0  # (B, N)
    num_pos = max(1.0, float(positive.sum()))
    target_cls = one_hot(labels.flatten(), logits.shape[-1])  # (B*N, C)
    return {"border_cls": sigmoid_focal_loss(logits.flatten(0, 1), target_cls, alpha=0.25, gamma=2.0,
                                             reduction="sum") / num_pos,
            "border_box": F.l1_loss(deltas[positive], targets[positive], reduction="sum") / num_pos}
