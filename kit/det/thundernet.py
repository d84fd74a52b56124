"""ThunderNet (Qin et al., arXiv 1903.11752): a two-stage detector light enough for a phone.

::

    images (B, 3, H, W) -> SNet (kit.nn.snet): C4 (B, c4, H/16, W/16), C5 (B, c5, H/32, W/32)
      -> CEM:  F_CEM = conv1x1(C4) + up(conv1x1(C5)) + bcast(conv1x1(GAP(C5)))   (B, alpha p^2, H/16, W/16)
      -> light RPN: F_RPN = ReLU(BN(conv1x1(ReLU(BN(dw5x5(F_CEM))))))            (B, rpn, H/16, W/16)
           -> objectness and deltas (1x1 convs), proposals
      -> SAM:  F_SAM = F_CEM * sigmoid(BN(conv1x1(F_RPN)))                         (B, alpha p^2, H/16, W/16)
      -> R-CNN subnet: PSRoIAlign of F_SAM (R, alpha, p, p) -> fc -> class logits, box deltas

The paper's two ideas beyond a small backbone:

* **CEM** (context enhancement module): a stride-16 map of three terms — C4 itself, C5 upsampled
  (a larger receptive field) and the global average of C5 broadcast over the map (image-level
  context) — each brought to ``alpha p^2`` channels by its own 1 x 1 conv and summed. A cheap
  substitute for an FPN: three 1 x 1 convs, one output map.
* **SAM** (spatial attention module): the RPN is trained to tell objects from background, so its
  feature knows where the foreground is; a 1 x 1 conv + BN + sigmoid of it gives a per-channel,
  per-cell weight in (0, 1) that re-weights F_CEM before the R-CNN subnet pools it. The RPN feature
  is *not* detached: the R-CNN loss also trains the RPN's layers through SAM.

Choices from the official code (``qinzheng93/ThunderNet``): the three CEM convs have biases and no
BN or activation, Xavier-uniform weights, the C5 term is upsampled with ``nearest`` to C4's size
(``ThunderNet_cem_neck.py``); the light RPN is dw 5x5 (no bias) + BN + ReLU + 1x1 + BN + ReLU, and SAM's
conv has no bias and a BN before the sigmoid (``ThunderNet_rpn_head.py``); the RPN's predictors
start N(0, 0.01). The R-CNN subnet is PSRoIAlign + **one** fc as in the paper (the released config
has two, ``Shared2FC``); sampling ratio 2 as :mod:`kit.det.light_head`.

Everything else is the chapter's two-stage detector (:class:`kit.det.two_stage.TwoStageDetector`):
the RPN is :mod:`kit.det.rpn` (torchvision's) with a predictor that reads the precomputed F_RPN, so
its anchors follow the map; RoI sampling, the Fast R-CNN loss and decoding are the detector's.
Switches (``cem=False``: F = conv1x1(C4) only; ``sam=False``: F_SAM = F_CEM) give the baseline
with the same head, RPN and FLOPs but no context and no attention.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import ps_roi_align

from kit.det.roi_heads import RoIHead, feature_stride
from kit.det.rpn import RPN, region_proposal_network
from kit.det.two_stage import TwoStageDetector, detect_from_rois, fast_rcnn_loss, sample_rois
from kit.det.validation import check_gt
from kit.nn.snet import SNet
from kit.runtime import seed_everything

__all__ = ["CEM_TERMS", "ContextEnhancement", "LightRPNFeature", "RPNPredictor", "SpatialAttention",
           "ThunderNetHead", "ThunderNet", "thundernet"]

CEM_TERMS = ("C4", "C5", "global")


def _check_positive(**values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, 1)  # with bias, as the official CEM
    nn.init.xavier_uniform_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ContextEnhancement(nn.Module):
    """CEM: (C4 (B, c4, h, w), C5 (B, c5, h', w')) -> F_CEM (B, out, h, w), the sum of the ``terms``.

    ``terms`` picks which of ``("C4", "C5", "global")`` are summed; ``("C4",)`` is the baseline's
    plain 1 x 1 conv of C4 (no context). :meth:`term_maps` gives the three terms apart.
    """

    def __init__(self, c4_channels: int, c5_channels: int, out_channels: int = 245, terms=CEM_TERMS):
        super().__init__()
        _check_positive(c4_channels=c4_channels, c5_channels=c5_channels, out_channels=out_channels)
        terms = tuple(terms)
        if "C4" not in terms or any(t not in CEM_TERMS for t in terms) or len(set(terms)) != len(terms):
            raise ValueError(f"terms must include 'C4' and be distinct names from {CEM_TERMS}, got {terms}")
        self.terms, self.out_channels = terms, out_channels
        self.c4 = _conv1x1(c4_channels, out_channels)
        self.c5 = _conv1x1(c5_channels, out_channels) if "C5" in terms else None
        self.glb = _conv1x1(c5_channels, out_channels) if "global" in terms else None

    def term_maps(self, c4: torch.Tensor, c5: torch.Tensor) -> dict[str, torch.Tensor]:
        """The switched-on terms, each (B, out, h, w) on C4's grid (the global one still (B, out, 1, 1))."""
        if c4.dim() != 4 or c5.dim() != 4 or c4.shape[0] != c5.shape[0]:
            raise ValueError(f"C4 and C5 must be maps (B, C, h, w) of one batch, got {tuple(c4.shape)} and "
                             f"{tuple(c5.shape)}")
        maps = {"C4": self.c4(c4)}
        if self.c5 is not None:
            maps["C5"] = F.interpolate(self.c5(c5), size=c4.shape[-2:], mode="nearest")  # (B, out, h, w)
        if self.glb is not None:
            maps["global"] = self.glb(c5.mean(dim=(2, 3), keepdim=True))  # (B, out, 1, 1), broadcast below
        return maps

    def forward(self, c4: torch.Tensor, c5: torch.Tensor) -> torch.Tensor:
        maps = self.term_maps(c4, c5)
        out = maps["C4"]
        for name in maps:
            if name != "C4":
                out = out + maps[name]  # the global term (B, out, 1, 1) broadcasts over the map
        return out  # (B, out, h, w)


class LightRPNFeature(nn.Module):
    """The light RPN's trunk: dw 5x5 + BN + ReLU, then 1x1 to ``rpn_channels`` + BN + ReLU."""

    def __init__(self, in_channels: int, rpn_channels: int = 256, kernel_size: int = 5):
        super().__init__()
        _check_positive(in_channels=in_channels, rpn_channels=rpn_channels, kernel_size=kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (so the map keeps its size), got {kernel_size}")
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, padding=kernel_size // 2,
                                   groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, rpn_channels, 1, bias=False)
        self.trunk = nn.Sequential(self.depthwise, nn.BatchNorm2d(in_channels), nn.ReLU(),
                                   self.pointwise, nn.BatchNorm2d(rpn_channels), nn.ReLU())
        for conv in (self.depthwise, self.pointwise):
            nn.init.normal_(conv.weight, std=0.01)  # the official RPN head's init; the BNs rescale
        self.out_channels = rpn_channels

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.trunk(features)  # (B, rpn_channels, h, w)


class RPNPredictor(nn.Module):
    """torchvision's ``RPNHead`` without its 3x3 conv: [F_RPN] -> [objectness (B, A, h, w)], [deltas (B, 4A, h, w)]."""

    def __init__(self, in_channels: int, num_anchors: int):
        super().__init__()
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, 4 * num_anchors, 1)
        for conv in (self.cls_logits, self.bbox_pred):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: list[torch.Tensor]):
        return [self.cls_logits(f) for f in features], [self.bbox_pred(f) for f in features]


class SpatialAttention(nn.Module):
    """SAM: (F_CEM (B, C, h, w), F_RPN (B, rpn, h, w)) -> F_CEM * sigmoid(BN(conv1x1(F_RPN)))."""

    def __init__(self, rpn_channels: int, out_channels: int = 245):
        super().__init__()
        _check_positive(rpn_channels=rpn_channels, out_channels=out_channels)
        self.conv = nn.Conv2d(rpn_channels, out_channels, 1, bias=False)
        nn.init.normal_(self.conv.weight, std=0.01)  # as the official RPN head (SAM lives there)
        self.bn = nn.BatchNorm2d(out_channels)

    def attention(self, rpn_features: torch.Tensor) -> torch.Tensor:
        """The weights in (0, 1), (B, C, h, w)."""
        return torch.sigmoid(self.bn(self.conv(rpn_features)))

    def forward(self, cem_features: torch.Tensor, rpn_features: torch.Tensor) -> torch.Tensor:
        if cem_features.shape[-2:] != rpn_features.shape[-2:] or cem_features.shape[1] != self.conv.out_channels:
            raise ValueError(f"F_CEM must be (B, {self.conv.out_channels}, h, w) on F_RPN's grid, got "
                             f"{tuple(cem_features.shape)} and F_RPN {tuple(rpn_features.shape)}")
        return cem_features * self.attention(rpn_features)  # (B, C, h, w)


class ThunderNetHead(RoIHead):
    """The R-CNN subnet: PSRoIAlign (R, alpha, p, p) of the ``alpha p^2``-channel map -> flatten ->
    one fc ``fc_channels`` + ReLU -> logits (R, C + 1), deltas (R, 4C). Paper: alpha 5, p 7, fc 1024."""

    def __init__(self, num_classes: int, in_channels: int = 245, pooled_size: int = 7, fc_channels: int = 256,
                 sampling_ratio: int = 2, class_agnostic: bool = False):
        super().__init__(num_classes, in_channels, class_agnostic)
        _check_positive(pooled_size=pooled_size, fc_channels=fc_channels, sampling_ratio=sampling_ratio)
        if in_channels % pooled_size ** 2:
            raise ValueError(f"in_channels must be alpha * pooled_size^2 (245 = 5 * 7 * 7), got {in_channels} "
                             f"with pooled_size {pooled_size}")
        self.alpha, self.pooled_size, self.sampling_ratio = in_channels // pooled_size ** 2, pooled_size, sampling_ratio
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(in_channels, fc_channels), nn.ReLU())
        self.classifier, self.regressor = self.predictors(fc_channels)

    def pool(self, features: torch.Tensor, proposals: list[torch.Tensor], image_size) -> torch.Tensor:
        """PSRoIAlign of every proposal: (B, alpha p^2, h, w) -> (R, alpha, p, p)."""
        scale = 1.0 / feature_stride(features, image_size)
        work = features if features.dtype in (torch.float32, torch.float64) else features.float()
        boxes = [p.to(work.dtype) for p in proposals]
        return ps_roi_align(work, boxes, self.pooled_size, scale, self.sampling_ratio).to(features.dtype)

    def forward(self, features: torch.Tensor, proposals: list[torch.Tensor], image_size: tuple[int, int]):
        hidden = self.fc(self.pool(features, proposals, image_size))  # (R, fc_channels)
        return self.classifier(hidden), self.regressor(hidden)  # (R, C + 1), (R, 4K)


class _Neck(nn.Module):
    """SNet + CEM as one module, so the detector's ``features`` gives F_CEM (B, alpha p^2, h, w)."""

    def __init__(self, backbone: SNet, cem: ContextEnhancement):
        super().__init__()
        self.snet, self.cem, self.out_channels = backbone, cem, cem.out_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        c4, c5 = self.snet(images)
        return self.cem(c4, c5)


class ThunderNet(TwoStageDetector):
    """SNet + CEM, light RPN, SAM (optional), R-CNN subnet; the loss terms of :class:`TwoStageDetector`.

    ``backbone`` is an :class:`SNet` returning (C4, C5); ``sam=None`` switches SAM off.
    :meth:`maps` gives (F_CEM, F_RPN, F_SAM) for figures and checks.
    """

    def __init__(self, backbone: SNet, cem: ContextEnhancement, rpn_feature: LightRPNFeature, rpn: RPN,
                 sam: SpatialAttention | None, roi_head: RoIHead, **detector_options):
        if not isinstance(backbone, SNet) or backbone.outputs != ("C4", "C5"):
            raise TypeError("the backbone must be a kit.nn.snet.SNet with outputs ('C4', 'C5')")
        if cem.out_channels != roi_head.in_channels:
            raise ValueError(f"the CEM gives {cem.out_channels} channels but the head takes {roi_head.in_channels}")
        super().__init__(_Neck(backbone, cem), rpn, roi_head, **detector_options)
        self.rpn_feature, self.sam = rpn_feature, sam
        self.to(memory_format=self.memory_format)

    def maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images -> F_CEM, F_RPN (what the RPN's predictors read), F_SAM (what the R-CNN pools)."""
        cem = self.features(images)  # (B, alpha p^2, h, w)
        rpn = self.rpn_feature(cem)  # (B, rpn, h, w), not detached: the R-CNN loss reaches it through SAM
        return cem, rpn, (self.sam(cem, rpn) if self.sam is not None else cem)

    def forward(self, images: torch.Tensor, **detection_options) -> list[dict]:
        _, rpn_map, rcnn_map = self.maps(images)
        proposals, _ = self.rpn(images, rpn_map)
        class_logits, box_deltas = self.roi_head(rcnn_map, proposals, tuple(images.shape[-2:]))
        return detect_from_rois(class_logits, box_deltas, proposals, tuple(images.shape[-2:]),
                                **{**self.detection_options, **detection_options})

    def loss(self, images: torch.Tensor, gt_boxes: list, gt_labels: list) -> dict[str, torch.Tensor]:
        self.check_images(images)
        check_gt(gt_boxes, gt_labels, images.shape[0], self.num_classes, like=images)
        _, rpn_map, rcnn_map = self.maps(images)
        proposals, rpn_losses = self.rpn(images, rpn_map, gt_boxes)
        sample = sample_rois(proposals, gt_boxes, gt_labels, self.num_rois, self.positive_fraction,
                             self.iou_threshold, validate=False)
        class_logits, box_deltas = self.roi_head(rcnn_map, sample.rois, tuple(images.shape[-2:]))
        losses = fast_rcnn_loss(class_logits, box_deltas, torch.cat(sample.labels), torch.cat(sample.box_targets))
        return {**rpn_losses, **losses}


def thundernet(num_classes: int, *, cem: bool = True, sam: bool = True, seed: int | None = None,
               snet_options: dict | None = None, alpha: int = 5, pooled_size: int = 7, rpn_channels: int = 256,
               fc_channels: int = 256, anchor_sizes=(32, 64, 128, 256, 512),
               aspect_ratios=(0.5, 0.75, 1.0, 4 / 3, 2.0), rpn_options: dict | None = None,
               detector_options: dict | None = None, device=None) -> ThunderNet:
    """A ThunderNet on a tiny :class:`SNet`; ``cem=False`` / ``sam=False`` switch its two modules off.

    ``seed`` seeds everything first; the modules are built in one fixed order (SNet, CEM, light
    RPN, RPN predictors, SAM, head), and the switched-off modules draw no random numbers that the
    rest would see differently: their layers are built anyway and discarded (so the arms of one
    seed share every weight they have in common). The anchors default
    to the paper's 25 (sizes 32-512 px, ratios 1:2, 3:4, 1:1, 4:3, 2:1); rescale them to the objects.
    """
    if seed is not None:
        seed_everything(seed)
    backbone = SNet(**(snet_options or {}))
    c4_channels, c5_channels = backbone.out_channels
    context = ContextEnhancement(c4_channels, c5_channels, alpha * pooled_size ** 2)
    if not cem:  # the same C4 conv (same weights), the context terms dropped
        context.terms, context.c5, context.glb = ("C4",), None, None
    rpn_feature = LightRPNFeature(context.out_channels, rpn_channels)
    rpn = region_proposal_network(rpn_channels, anchor_sizes, aspect_ratios, **(rpn_options or {}))
    rpn.head = RPNPredictor(rpn_channels, rpn.anchor_generator.num_anchors_per_location()[0])
    attention = SpatialAttention(rpn_channels, context.out_channels)
    head = ThunderNetHead(num_classes, context.out_channels, pooled_size, fc_channels)
    return ThunderNet(backbone, context, rpn_feature, rpn, attention if sam else None, head,
                      **(detector_options or {})).to(device)
