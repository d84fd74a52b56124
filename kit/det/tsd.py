"""TSD, the decoupling head of the OpenImages 2019 winner: classify and regress from different places.

"1st Place Solutions for OpenImage2019" (Liu et al., arXiv 2003.07557) and "Revisiting the Sibling
Head in Object Detector" (Song et al., arXiv 2003.07540, the same head as TSD): the sibling head of
Faster R-CNN reads one RoI feature for both tasks, but the points that tell the class (a
discriminative part) and the points that give the extent (the edges) are not the same. TSD
derives two proposals from the one RoI feature F (7 x 7, through one shared fc of 256):

* classification: a point-wise offset per bin, Δc = F_c(F) in R^{k x k x 2}, moves each of the
  k x k bins of a deformable RoIAlign (:func:`kit.ops.delta_roi_align.delta_roi_align`);
* regression: one translation of the whole proposal, Δr = F_r(F) in R^2, P̂_r = P + γ Δr ⊙ (w, h)
  (γ = 0.1, the official ``scale = 0.1`` / ``trans_std = 0.1``), pooled as RoIAlign of P̂_r; the
  regression target is the object encoded relative to P̂_r (``bbox_target_single_tsd``);
* each pooled feature has its own 2-fc (256 here, 1024 orig.) and predictor;
* the ordinary sibling head (here literally :class:`kit.det.roi_heads.FasterRCNNHead`) is
  trained alongside, during training only, and the *progressive constraint* asks the decoupled
  head to beat it by a margin: with the sibling's quantities detached,
  M_cls = [p_sib(y) − p_DH(y) + m_c]_+, m_c = min(m, 1 − p_sib(y)), over every sampled RoI
  (background at label 0), and M_loc = [IoU_sib − IoU_DH + m_r]_+, m_r = min(m, 1 − IoU_sib), over
  the positives, IoUs of the boxes decoded at the label's slot against the matched object.

Only the decoupled head is used at test time: :meth:`TSDHead.forward` returns its logits and
deltas, so :class:`kit.det.two_stage.TwoStageDetector`'s inference serves it unchanged.

Choices. The kit's box conventions, not the official mmdet-v1 ones: torchvision's ``BoxCoder``
(weights 10, 10, 5, 5; no legacy +1 in w, h or IoU; background is column 0) for both branches;
the RoI's w, h that scale Δr are x2 − x1 without +1. The margin m defaults to 0.3, as every
released config (the head's own default is 0.2). The last layers of F_c and F_r start at zero
(official: Kaiming), so at step 0 the decoupled head pools exactly where the sibling does. The
DH regression target is computed from the detached P̂_r (the official code does not detach
it), so Δr learns from the features it pools and from M_loc. All five terms weigh 1.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kit.det.boxes import paired_iou
from kit.det.roi_heads import FasterRCNNHead, RoIHead, feature_stride
from kit.det.two_stage import (TwoStageDetector, decode_deltas, encode_boxes, fast_rcnn_loss, sample_rois,
                               two_stage_detector)
from kit.det.validation import check_gt, check_shape
from kit.ops.delta_roi_align import delta_roi_align

__all__ = ["TSDOutput", "TSDHead", "TSDDetector", "tsd_detector", "shift_boxes", "progressive_constraint"]


class TSDOutput(NamedTuple):
    """What :meth:`TSDHead.forward_train` returns for R RoIs (C classes): sibling and DH logits
    (R, C + 1) and deltas (R, 4C); delta_c (R, 2, p, p); delta_r (R, 2); shifted_rois (R, 4)
    xyxy px, P̂_r (differentiable in delta_r)."""

    sibling_logits: torch.Tensor
    sibling_deltas: torch.Tensor
    logits: torch.Tensor
    deltas: torch.Tensor
    delta_c: torch.Tensor
    delta_r: torch.Tensor
    shifted_rois: torch.Tensor


def shift_boxes(boxes: torch.Tensor, delta_r: torch.Tensor, gamma: float = 0.1) -> torch.Tensor:
    """P̂_r = P + γ Δr ⊙ (w, h) on both corners, a pure translation: boxes (R, 4), delta_r (R, 2) -> (R, 4)."""
    check_shape("boxes", boxes, (None, 4))
    check_shape("delta_r", delta_r, (boxes.shape[0], 2))
    shift = gamma * delta_r * (boxes[:, 2:] - boxes[:, :2])  # (R, 2) px
    return boxes + torch.cat([shift, shift], 1)


def _class_slot(deltas: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Deltas (R, 4K) at the label's slot (labels 1..C; class-agnostic K = 1) -> (R, 4)."""
    slots = deltas.view(deltas.shape[0], -1, 4)
    slot = labels - 1 if slots.shape[1] > 1 else torch.zeros_like(labels)
    return slots[torch.arange(len(labels), device=deltas.device), slot]


def progressive_constraint(sibling_logits, logits, labels, sibling_boxes, boxes, gt_boxes,
                           margin_cls: float = 0.3, margin_loc: float = 0.3) -> dict[str, torch.Tensor]:
    """``{"pc_cls", "pc_loc"}``: the two margin losses (see the module docstring).

    sibling_logits, logits (R, C + 1); labels (R,) in 0..C (every sampled RoI); sibling_boxes,
    boxes, gt_boxes (R+, 4) xyxy px for the positives (decoded at the label's slot, and their
    objects). The sibling's side is detached here. Both are means (0 with no RoI or no positive).
    """
    for name, m in (("margin_cls", margin_cls), ("margin_loc", margin_loc)):
        if not 0 <= m <= 1:
            raise ValueError(f"{name} must be in [0, 1] (a margin on a probability / an IoU), got {m}")
    check_shape("labels", labels, (None,))
    check_shape("logits", logits, (labels.shape[0], None))
    check_shape("sibling_logits", sibling_logits, tuple(logits.shape))
    check_shape("boxes", boxes, (None, 4))
    for name, t in (("sibling_boxes", sibling_boxes), ("gt_boxes", gt_boxes)):
        check_shape(name, t, tuple(boxes.shape))
    rows = torch.arange(len(labels), device=labels.device)
    p_sib = sibling_logits.detach().float().softmax(-1)[rows, labels]  # (R,)
    p_dh = logits.float().softmax(-1)[rows, labels]
    m_cls = torch.clamp(1 - p_sib, max=margin_cls)  # min(m, 1 - p_sib), detached with p_sib
    pc_cls = F.relu(p_sib - p_dh + m_cls).mean() if len(labels) else logits.sum() * 0
    iou_sib = paired_iou(sibling_boxes.detach().float(), gt_boxes.float())  # (R+,)
    iou_dh = paired_iou(boxes.float(), gt_boxes.float())
    m_loc = torch.clamp(1 - iou_sib, max=margin_loc)
    pc_loc = F.relu(iou_sib - iou_dh + m_loc).mean() if len(boxes) else boxes.sum() * 0 + logits.sum() * 0
    return {"pc_cls": pc_cls, "pc_loc": pc_loc}


def _offset_branch(width: int, outputs: int) -> nn.Sequential:
    """fc - ReLU - fc, the last layer at zero (no shift at the start)."""
    branch = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, outputs))
    nn.init.zeros_(branch[2].weight)
    nn.init.zeros_(branch[2].bias)
    return branch


class TSDHead(RoIHead):
    """The sibling head (:class:`FasterRCNNHead`, training only) plus the decoupled head.

    ``forward`` -> the decoupled head's (logits (R, C + 1), deltas (R, 4C)); ``forward_train`` ->
    :class:`TSDOutput` with both heads and the offsets. ``offset_channels`` is the shared fc's
    width (256, as the official ``shared_fc``); ``fc_channels`` the width of every 2-fc branch.
    """

    def __init__(self, num_classes: int, in_channels: int, fc_channels: int = 256, offset_channels: int = 256,
                 pooled_size: int = 7, sampling_ratio: int = 2, gamma: float = 0.1, class_agnostic: bool = False):
        super().__init__(num_classes, in_channels, class_agnostic)
        for name, value in (("fc_channels", fc_channels), ("offset_channels", offset_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1] (offsets in units of the RoI's size), got {gamma}")
        self.gamma = gamma
        self.sibling = FasterRCNNHead(num_classes, in_channels, fc_channels, pooled_size, sampling_ratio,
                                      class_agnostic)
        self.pooled_size, self.sampling_ratio = pooled_size, sampling_ratio
        self.shared_fc = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * pooled_size ** 2, offset_channels),
                                       nn.ReLU())
        self.delta_c = _offset_branch(offset_channels, 2 * pooled_size ** 2)
        self.delta_r = _offset_branch(offset_channels, 2)

        def two_fc():
            return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * pooled_size ** 2, fc_channels), nn.ReLU(),
                                 nn.Linear(fc_channels, fc_channels), nn.ReLU())
        self.cls_fcs, self.reg_fcs = two_fc(), two_fc()
        self.classifier, _ = self.predictors(fc_channels)
        _, self.regressor = self.predictors(fc_channels)

    def offsets(self, roi_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RoI features (R, F, p, p) -> Δc (R, 2, p, p) and Δr (R, 2), in units of γ (w, h)."""
        hidden = self.shared_fc(roi_features)  # (R, offset_channels)
        p = self.pooled_size
        return self.delta_c(hidden).view(-1, 2, p, p), self.delta_r(hidden)

    def decoupled(self, features, proposals, image_size):
        """The decoupled head: (logits, deltas, Δc, Δr, P̂_r (R, 4))."""
        rois = [p.float() for p in proposals]
        roi_features = self.sibling.pool(features, rois, image_size)  # (R, F, p, p), the sibling's RoIAlign
        delta_c, delta_r = self.offsets(roi_features)
        scale = 1.0 / feature_stride(features, image_size)
        pool = dict(output_size=self.pooled_size, spatial_scale=scale, sampling_ratio=self.sampling_ratio,
                    gamma=self.gamma)
        cls_features = delta_roi_align(features.float(), rois, delta_c, **pool)  # (R, F, p, p)
        reg_features = delta_roi_align(features.float(), rois, delta_r, **pool)  # RoIAlign of P̂_r
        all_rois = torch.cat(rois) if rois else features.new_zeros(0, 4)
        shifted = shift_boxes(all_rois, delta_r, self.gamma)
        logits = self.classifier(self.cls_fcs(cls_features.to(features.dtype)))
        deltas = self.regressor(self.reg_fcs(reg_features.to(features.dtype)))
        return logits, deltas, delta_c, delta_r, shifted, roi_features

    def forward(self, features: torch.Tensor, proposals: list[torch.Tensor], image_size: tuple[int, int]):
        logits, deltas, *_ = self.decoupled(features, proposals, image_size)
        return logits, deltas  # (R, C + 1), (R, 4C): the decoupled head only

    def forward_train(self, features, proposals, image_size) -> TSDOutput:
        logits, deltas, delta_c, delta_r, shifted, roi_features = self.decoupled(features, proposals, image_size)
        hidden = self.sibling.fcs(roi_features)  # the sibling on the same RoIAlign features
        return TSDOutput(self.sibling.classifier(hidden), self.sibling.regressor(hidden), logits, deltas,
                         delta_c, delta_r, shifted)


class TSDDetector(TwoStageDetector):
    """The two-stage detector with a :class:`TSDHead`; ``loss`` adds the sibling's terms
    (``sibling_cls``, ``sibling_box``), the decoupled head's (``cls``, ``box``, its box target
    encoded w.r.t. P̂_r) and the progressive constraint (``pc_cls``, ``pc_loc``) to the RPN's."""

    def __init__(self, backbone, rpn, roi_head: TSDHead, *, margin_cls: float = 0.3, margin_loc: float = 0.3,
                 **options):
        if not isinstance(roi_head, TSDHead):
            raise TypeError(f"the roi_head of a TSDDetector must be a TSDHead, got {type(roi_head).__name__}")
        progressive_constraint(torch.zeros(0, 2), torch.zeros(0, 2), torch.zeros(0, dtype=torch.long),
                               *[torch.zeros(0, 4)] * 3, margin_cls, margin_loc)  # refuses bad margins now
        super().__init__(backbone, rpn, roi_head, **options)
        self.margin_cls, self.margin_loc = margin_cls, margin_loc

    def loss(self, images: torch.Tensor, gt_boxes: list, gt_labels: list) -> dict[str, torch.Tensor]:
        self.check_images(images)
        check_gt(gt_boxes, gt_labels, images.shape[0], self.num_classes, like=images)
        features = self.features(images)
        proposals, rpn_losses = self.rpn(images, features, gt_boxes)
        sample = sample_rois(proposals, gt_boxes, gt_labels, self.num_rois, self.positive_fraction,
                             self.iou_threshold, validate=False)
        out = self.roi_head.forward_train(features, sample.rois, tuple(images.shape[-2:]))
        labels, rois = torch.cat(sample.labels), torch.cat(sample.rois).float()
        matched = torch.cat([b[i.clamp(min=0)] if len(b) else b.new_zeros(len(i), 4)
                             for b, i in zip(gt_boxes, sample.gt_index)]).float()  # (R, 4); rows of positives used
        positive = torch.where(labels > 0)[0]
        shifted = out.shifted_rois.detach()
        dh_targets = torch.zeros_like(rois)
        dh_targets[positive] = encode_boxes(matched[positive], shifted[positive])  # the object w.r.t. P̂_r
        sibling = fast_rcnn_loss(out.sibling_logits, out.sibling_deltas, labels, torch.cat(sample.box_targets))
        decoupled = fast_rcnn_loss(out.logits, out.deltas, labels, dh_targets)
        pos_labels = labels[positive]
        sibling_boxes = decode_deltas(_class_slot(out.sibling_deltas.float()[positive], pos_labels), rois[positive])[:, 0]
        dh_boxes = decode_deltas(_class_slot(out.deltas.float()[positive], pos_labels),
                                 out.shifted_rois[positive])[:, 0]  # decoded from P̂_r, differentiable in Δr
        pc = progressive_constraint(out.sibling_logits, out.logits, labels, sibling_boxes, dh_boxes,
                                    matched[positive], self.margin_cls, self.margin_loc)
        return {**rpn_losses, "sibling_cls": sibling["cls"], "sibling_box": sibling["box"], **decoupled, **pc}


def tsd_detector(num_classes: int, *, margin_cls: float = 0.3, margin_loc: float = 0.3, **options) -> TSDDetector:
    """:func:`kit.det.two_stage.two_stage_detector` with a :class:`TSDHead` (``options`` as there,
    head options included), as a :class:`TSDDetector`. Built the same way and in the same order, so
    the same ``seed`` gives it the same backbone and RPN weights as any other head's detector."""
    base = two_stage_detector(TSDHead, num_classes, **options)
    return TSDDetector(base.backbone, base.rpn, base.roi_head, margin_cls=margin_cls, margin_loc=margin_loc,
                       num_rois=base.num_rois, positive_fraction=base.positive_fraction,
                       iou_threshold=base.iou_threshold, channels_last=base.memory_format == torch.channels_last,
                       **base.detection_options)
