"""Second-stage heads of the two-stage detector: the :class:`RoIHead` contract and Faster R-CNN's head.

A head maps the one feature map and the proposals of a batch to, per RoI, class logits (C + 1
columns, column 0 background) and box deltas (4 per class, or 4 class-agnostic); the detector
(:class:`kit.det.two_stage.TwoStageDetector`) samples the RoIs, computes the loss and decodes.
A new head (R-FCN's position-sensitive score maps, Light-Head's thin map and single fc,
ThunderNet's PSRoIAlign head) subclasses :class:`RoIHead` and implements ``forward`` only.

:class:`FasterRCNNHead` is the "heavy" head every paper of the chapter compares with (Faster
R-CNN with an FPN-era box head, torchvision's ``TwoMLPHead`` + ``FastRCNNPredictor``): RoIAlign
7 x 7 on the map, two fully connected layers (orig. 1024 wide; 256 here), then one linear layer
for the class logits and one for the deltas. Its cost per RoI grows with the map's channels
times 49, which is what Light-Head R-CNN's thin map attacks.

Choices: RoIAlign with ``aligned=True`` (the half-pixel shift of Detectron2's ROIAlignV2;
torchvision's ``MultiScaleRoIAlign`` leaves it off) and ``sampling_ratio=2``, because
``torchvision.ops.ps_roi_align`` always shifts by half a pixel: the heavy head and the
position-sensitive heads then sample the same points of a box. The predictors start as in
Detectron / mmdetection, class weights N(0, 0.01), delta weights N(0, 0.001), zero biases, so
the first detections are near-uniform scores on the proposals themselves.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kit.ops.roi_align import roi_align

__all__ = ["RoIHead", "FasterRCNNHead", "feature_stride", "head_flops"]


def feature_stride(features: torch.Tensor, image_size: tuple[int, int]) -> int:
    """The map's stride, ``image width / map width`` rounded to a power of two (torchvision's
    ``MultiScaleRoIAlign`` infers its scales so): 16 for a 100 px image's 7-cell C4 as for 128 px."""
    return 2 ** round(math.log2(image_size[-1] / features.shape[-1]))


def head_flops(head: nn.Module, features: torch.Tensor, num_rois: int, image_size: tuple[int, int]) -> dict:
    """FLOPs of one forward of a head, split into the part paid once per map and the part per RoI.

    features (B, in_channels, h, w); ``num_rois`` boxes per image, each the whole image (the
    count, not where the boxes are, sets the cost). Counted by
    :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products). Pass the
    head and features on the ``meta`` device to leave the pooling out, as torchvision's kernels are
    not counted (P28 does); on the CPU the heavy head pools with :func:`kit.ops.roi_align.roi_align`,
    whose two products are counted. ``per_map`` is the forward with no RoI at all (R-FCN's
    score maps, Light-Head's thin map), ``per_roi`` the rest divided by ``B * num_rois``.
    Returns ``{"per_map", "per_roi", "total"}`` in FLOPs (a multiply-add counts 2).
    """
    if isinstance(num_rois, bool) or not isinstance(num_rois, int) or num_rois < 1:
        raise ValueError(f"num_rois must be an int >= 1, got {num_rois!r}")
    if features.dim() != 4:
        raise ValueError(f"features must be (B, C, h, w), got {tuple(features.shape)}")
    height, width = image_size
    whole = features.new_tensor([[0.0, 0.0, float(width), float(height)]])  # (1, 4) xyxy px

    def count(rois_per_image: int) -> int:
        proposals = [whole.expand(rois_per_image, 4) for _ in range(features.shape[0])]
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            head(features, proposals, image_size)
        return counter.get_total_flops()

    per_map, total = count(0), count(num_rois)
    return {"per_map": per_map, "per_roi": (total - per_map) / (features.shape[0] * num_rois), "total": total}


class RoIHead(nn.Module):
    """The base of every second stage: what the two-stage detector asks of a head.

    A subclass implements ``forward(features, proposals, image_size) -> (class_logits,
    box_deltas)``: features (B, in_channels, h, w), the one map the RPN saw; proposals
    [(R_i, 4)] xyxy px per image; image_size (H, W). class_logits (R, num_classes + 1), column 0
    background; box_deltas (R, 4 * num_classes), or (R, 4) with ``class_agnostic``; R = sum R_i,
    rows in image order. Sampling, loss and decoding are the detector's, not the head's.
    """

    def __init__(self, num_classes: int, in_channels: int, class_agnostic: bool = False):
        super().__init__()
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.num_classes, self.in_channels, self.class_agnostic = num_classes, in_channels, class_agnostic

    @property
    def num_box_slots(self) -> int:
        """Box deltas per RoI: one per class, or one for all."""
        return 1 if self.class_agnostic else self.num_classes

    def predictors(self, width: int) -> tuple[nn.Linear, nn.Linear]:
        """The two output layers on a ``width``-dim RoI feature: class logits (C + 1) and deltas
        (4 per box slot), initialised N(0, 0.01) and N(0, 0.001) with zero biases."""
        classifier, regressor = nn.Linear(width, self.num_classes + 1), nn.Linear(width, 4 * self.num_box_slots)
        for layer, std in ((classifier, 0.01), (regressor, 0.001)):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)
        return classifier, regressor

    def forward(self, features: torch.Tensor, proposals: list[torch.Tensor], image_size: tuple[int, int]):
        raise NotImplementedError(f"{type(self).__name__} defines no forward")


class FasterRCNNHead(RoIHead):
    """RoIAlign ``pooled_size`` x ``pooled_size`` -> fc ``fc_channels`` -> ReLU -> fc -> ReLU -> logits, deltas."""

    def __init__(self, num_classes: int, in_channels: int, fc_channels: int = 256, pooled_size: int = 7,
                 sampling_ratio: int = 2, class_agnostic: bool = False):
        super().__init__(num_classes, in_channels, class_agnostic)
        if fc_channels < 1 or pooled_size < 1:
            raise ValueError(f"fc_channels and pooled_size must be >= 1, got {fc_channels} and {pooled_size}")
        self.pooled_size, self.sampling_ratio = pooled_size, sampling_ratio
        self.fcs = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * pooled_size ** 2, fc_channels), nn.ReLU(),
                                 nn.Linear(fc_channels, fc_channels), nn.ReLU())
        self.classifier, self.regressor = self.predictors(fc_channels)

    def pool(self, features: torch.Tensor, proposals: list[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        """RoIAlign of every proposal: (R, in_channels, pooled_size, pooled_size)."""
        scale = 1.0 / feature_stride(features, image_size)
        boxes = [p.float() for p in proposals]  # float32 pixels: half-precision coordinates are off by ~0.5 px
        pooled = roi_align(features.float(), boxes, self.pooled_size, scale, self.sampling_ratio, aligned=True)
        return pooled.to(features.dtype)  # (R, in_channels, p, p), back to the autocast dtype

    def forward(self, features: torch.Tensor, proposals: list[torch.Tensor], image_size: tuple[int, int]):
        hidden = self.fcs(self.pool(features, proposals, image_size))  # (R, fc_channels)
        return self.classifier(hidden), self.regressor(hidden)  # (R, C + 1), (R, 4K)
