"""DetNet: a backbone that keeps stride 16 in its extra stages (Li et al., ECCV 2018, arXiv 1804.06215).

A classification backbone halves the resolution at every stage; a detector (FPN, RetinaNet)
then adds stages on top, down to stride 64. DetNet keeps ResNet's stages 1-4 (C2..C4, strides
4, 8, 16) and makes stages 5 and 6 *keep stride 16*. To still grow the receptive field, their
3x3 convolutions are dilated (d = 2), and each new stage opens with a bottleneck whose shortcut
is a 1x1 conv + BN projection even though the channel counts match (type **B**), followed by
bottlenecks with an identity shortcut (type **A**)::

    x -> 1x1 -> BN -> ReLU -> 3x3, dilation 2, pad 2, stride 1 -> BN -> ReLU -> 1x1 -> BN -+-> ReLU
    |                                                                                      |
    +------------------ identity (A)  |  1x1 conv -> BN (B) ----------------------------------+

A 3x3 convolution of dilation d and padding d keeps the map's size, so every stage from 4 on
is H/16 x W/16, while the theoretical receptive field grows by ``2 d * 16`` px per dilated 3x3.

There is no official code; these choices follow the reimplementation by guoruoqian
(``lib/model/fpn/detnet_backbone.py``, ``BottleneckA`` / ``BottleneckB`` / ``_make_new_layer``):
all convolutions bias-free (the shortcut conv too), plain BatchNorm, ReLU after the add, the
bottleneck's inner width a quarter of its output (256 inside, 1024 out there: stages 5 and 6
keep stage 4's 1024 channels). Kit scale: stages 1-4 are :class:`kit.nn.backbone.TinyResNet`'s
stem and first three stages of basic blocks (orig. ResNet-50 bottlenecks, [3, 4, 6]); stages 5
and 6 have ``blocks`` DetNet bottlenecks each (orig. 3, 3).

The neck. The paper compares the backbones *inside FPN*: both get a top-down path, so the
ResNet baseline's coarse C5 and C6 are added back onto its stride-16 C4. :class:`TopDownNeck` is
that path over C4, C5, C6 (``torchvision.ops.FeaturePyramidNetwork``: a 1x1 lateral with bias per
level, the reimplementation's ``RCNN_latlayer1/2`` and ``RCNN_toplayer``, 1024 -> 256; nearest
upsampling and a sum; a 3x3 output conv, which torchvision puts on every level while the
reimplementation smooths only P3 and P2) ending at P4, the map the kit's single-map detector
reads (``neck="fpn"``). A simplification of the paper's FPN: no P2, P3 and one level read, not five.
For DetNet C4, C5 and C6 are all stride 16, the upsampling to the same size is the identity and
P4 is a 3x3 of the plain sum of the three laterals -- the paper's "no upsampling between P4-P6".
``neck="last"`` is the single-map design without a neck: a 1x1 conv of the last stage alone.

The baseline, :func:`resnet_style_backbone`: the same stages built from the same bottlenecks
without dilation, stages 5 and 6 downsampling (stride on the 3x3, torchvision-style, projection
shortcut with stride) to strides 32 and 64, doubling the width at each, as ResNet does: 4x fewer
positions times 4x the channel products keeps each stage's FLOPs close to DetNet's (per stage 2.875
against 3.125 ``h w C^2`` multiply-adds, C stage 4's channels; :func:`stage_flops` measures them
with :class:`torch.utils.flop_counter.FlopCounterMode`). The paper counts a backbone's FLOPs without
the detector's layers, so the neck is counted apart.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import FeaturePyramidNetwork

from kit.nn.backbone import TinyResNet

__all__ = ["DetNetBottleneck", "TopDownNeck", "TinyDetNet", "tiny_detnet", "resnet_style_backbone", "stage_flops"]
NECKS = ("fpn", "last")
LEVELS = ("C4", "C5", "C6")  # what the neck reads


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


class DetNetBottleneck(nn.Module):
    """1x1 -> BN -> ReLU -> 3x3 (dilated) -> BN -> ReLU -> 1x1 -> BN, + shortcut, ReLU.

    ``projection=False`` is type A (identity shortcut: needs ``in_channels == out_channels`` and
    stride 1); ``projection=True`` is type B (1x1 conv + BN shortcut, with the block's stride),
    used even when the shapes match. ``width`` is the inner width (default ``out_channels // 4``).
    The 3x3 has padding = dilation, so at stride 1 the map keeps its size.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int | None = None, dilation: int = 2,
                 stride: int = 1, projection: bool = False):
        super().__init__()
        width = width if width is not None else max(1, out_channels // 4)
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("width", width),
                            ("dilation", dilation)):
            _check_positive_int(name, value)
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride!r}")
        if not projection and (in_channels != out_channels or stride != 1):
            raise ValueError(f"an identity shortcut (type A) needs in_channels == out_channels and stride 1, got "
                             f"{in_channels} -> {out_channels}, stride {stride}; use projection=True (type B)")
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if projection:  # type B: the reimplementation's extra_conv
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    @property
    def dilation(self) -> int:
        return self.conv2.dilation[0]

    def set_dilation(self, dilation: int) -> None:
        """Change the 3x3's dilation (and padding) in place: same weights, another spacing of its taps."""
        _check_positive_int("dilation", dilation)
        self.conv2.dilation, self.conv2.padding = (dilation, dilation), (dilation, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in, h, w) -> (B, out, h / stride, w / stride)
        out = torch.relu(self.bn1(self.conv1(x)))  # (B, width, h, w)
        out = torch.relu(self.bn2(self.conv2(out)))  # (B, width, h / s, w / s); pad = dilation keeps the size
        out = self.bn3(self.conv3(out))  # (B, out, h / s, w / s)
        return torch.relu(out + self.shortcut(x))  # ReLU after the add


def new_stage(in_channels: int, out_channels: int, blocks: int, dilation: int, stride: int) -> nn.Sequential:
    """One of stages 5, 6: a type-B bottleneck (carrying the stride, if any), then ``blocks - 1`` type A."""
    _check_positive_int("blocks", blocks)
    layers = [DetNetBottleneck(in_channels, out_channels, dilation=dilation, stride=stride, projection=True)]
    layers += [DetNetBottleneck(out_channels, out_channels, dilation=dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class TopDownNeck(nn.Module):
    """FPN's top-down path over C4, C5, C6, read at its finest level: ``P4``, (B, out, h4, w4).

    ``torchvision.ops.FeaturePyramidNetwork`` over the three levels: lateral 1x1 (with bias) of
    each, from C6 down each sum nearest-upsampled to the next level's size and added to its
    lateral, a 3x3 output conv. Only P4 is read, so the 3x3 output convs of P5 and P6 are
    replaced by identities (no weights that never get a gradient); ``self.fpn(maps)["C4"]`` is
    P4 exactly as a full FPN with these weights computes it.
    """

    def __init__(self, in_channels, out_channels: int):
        super().__init__()
        in_channels = tuple(in_channels)
        if len(in_channels) != len(LEVELS):
            raise ValueError(f"in_channels are the channels of C4, C5, C6 (three ints), got {in_channels!r}")
        for name, value in zip(LEVELS, in_channels):
            _check_positive_int(f"in_channels of {name}", value)
        _check_positive_int("out_channels", out_channels)
        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels)
        for level in range(1, len(LEVELS)):
            self.fpn.layer_blocks[level] = nn.Identity()  # P5, P6: not read
        self.out_channels = out_channels

    def forward(self, maps: dict) -> torch.Tensor:  # {"C4": (B, c4, h4, w4), "C5": ..., "C6": ...} -> (B, out, h4, w4)
        missing = [name for name in LEVELS if name not in maps]
        if missing:
            raise ValueError(f"the neck reads the maps {LEVELS}, missing {missing}")
        return self.fpn(OrderedDict((name, maps[name]) for name in LEVELS))["C4"]


class TinyDetNet(nn.Module):
    """Stem and stages 2-4 of :class:`kit.nn.backbone.TinyResNet`, then two stages of DetNet bottlenecks.

    ``stage_channels`` are the outputs of stages 5 and 6 and ``stage_strides`` their strides
    (1: keep the resolution, DetNet; 2: halve it, the ResNet-style baseline); ``dilation`` is
    the 3x3's dilation in each of them. ``forward`` gives the detector's map with ``out_channels``
    channels, ``(B, out_channels, H / stride, W / stride)``: with ``neck="fpn"`` P4 of
    :class:`TopDownNeck` over C4-C6 (stride 16 for any stage strides), with ``neck="last"`` a 1x1
    conv of C6 alone (the stride of C6). With ``return_stages=True`` the dict ``{"C2": ...,
    "C6": ..., "out": ...}`` of every stage's map. Attributes: ``out_channels``, ``stride`` (of the
    detector's map), ``stage_strides_px`` (per stage), ``neck`` (the module) and ``neck_kind``.
    """

    def __init__(self, widths=(16, 32, 64), stage_channels=(64, 64), stage_strides=(1, 1), dilation=(2, 2),
                 blocks=(2, 2), out_channels: int = 64, neck: str = "fpn"):
        super().__init__()
        if neck not in NECKS:
            raise ValueError(f"neck must be one of {NECKS}, got {neck!r}")
        if len(widths) != 3:
            raise ValueError(f"widths are the channels of stages 2-4 (three ints), got {widths!r}")
        for name, value in (("stage_channels", stage_channels), ("stage_strides", stage_strides),
                            ("dilation", dilation), ("blocks", blocks)):
            if len(value) != 2:
                raise ValueError(f"{name} must have two entries (stages 5 and 6), got {value!r}")
        _check_positive_int("out_channels", out_channels)
        resnet = TinyResNet(tuple(widths) + (widths[-1],), num_outputs=4)
        self.stem, self.stages = resnet.stem, nn.ModuleList(resnet.stages[:3])  # C2, C3, C4: strides 4, 8, 16
        in_channels, stride = widths[-1], 16
        self.stage_strides_px = [4, 8, 16]
        for channels, step, d, count in zip(stage_channels, stage_strides, dilation, blocks):
            self.stages.append(new_stage(in_channels, channels, count, d, step))
            in_channels, stride = channels, stride * step
            self.stage_strides_px.append(stride)
        if neck == "fpn":  # laterals of C4, C5, C6, top-down, P4: stride 16
            self.neck = TopDownNeck((widths[-1],) + tuple(stage_channels), out_channels)
            stride = 16
        else:  # a 1x1 of the last stage: the same head input for any widths, at C6's stride
            self.neck = nn.Conv2d(in_channels, out_channels, 1)
        self.neck_kind, self.out_channels, self.stride = neck, out_channels, stride

    def bottlenecks(self) -> list[DetNetBottleneck]:
        """The DetNet bottlenecks of stages 5 and 6, in order."""
        return [m for stage in self.stages[3:] for m in stage]

    def set_dilation(self, dilation) -> None:
        """Set the 3x3 dilation of stages 5 and 6 (an int, or one per stage) on the trained weights."""
        per_stage = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
        if len(per_stage) != 2:
            raise ValueError(f"dilation must be an int or two ints (stages 5 and 6), got {dilation!r}")
        for stage, d in zip(self.stages[3:], per_stage):
            for block in stage:
                block.set_dilation(d)

    def forward(self, images: torch.Tensor, return_stages: bool = False):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        x = self.stem(images)  # (B, widths[0], H/2, W/2)
        maps = {}
        for name, stage in zip(("C2", "C3", "C4", "C5", "C6"), self.stages):
            x = stage(x)  # C2 (H/4), C3 (H/8), C4 (H/16), C5 and C6 (H/16 for DetNet; H/32, H/64 downsampling)
            maps[name] = x
        maps["out"] = self.neck(maps) if self.neck_kind == "fpn" else self.neck(x)  # (B, out, H/stride, W/stride)
        return maps if return_stages else maps["out"]


def tiny_detnet(widths=(16, 32, 64), blocks=(2, 2), out_channels: int = 64, dilation: int = 2,
                neck: str = "fpn") -> TinyDetNet:
    """DetNet at kit scale: stages 5 and 6 keep stride 16 and stage 4's channels, 3x3s dilated by 2."""
    return TinyDetNet(widths, (widths[-1], widths[-1]), (1, 1), (dilation, dilation), blocks, out_channels, neck)


def resnet_style_backbone(widths=(16, 32, 64), blocks=(2, 2), out_channels: int = 64, neck: str = "fpn") -> TinyDetNet:
    """The baseline: the same blocks undilated, stages 5 and 6 at strides 32 and 64 with 2x and 4x stage 4's width."""
    return TinyDetNet(widths, (2 * widths[-1], 4 * widths[-1]), (2, 2), (1, 1), blocks, out_channels, neck)


@torch.no_grad()
def stage_flops(backbone: TinyDetNet, image_size: int) -> dict[str, int]:
    """FLOPs (2 per multiply-add, FlopCounterMode's count) of each part for one ``image_size`` image:
    ``{"stem", "C2", ..., "C6", "neck"}``, counted part by part in eval mode."""
    if not isinstance(backbone, TinyDetNet):
        raise TypeError(f"backbone must be a TinyDetNet, got {type(backbone).__name__}")
    _check_positive_int("image_size", image_size)
    was_training = backbone.training
    backbone.eval()
    x = torch.zeros(1, 3, image_size, image_size, device=next(backbone.parameters()).device)
    parts = [("stem", backbone.stem)] + list(zip(("C2", "C3", "C4", "C5", "C6"), backbone.stages))
    counts, maps = {}, {}
    for name, module in parts:
        with FlopCounterMode(display=False) as counter:
            x = maps[name] = module(x)
        counts[name] = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        backbone.neck(maps) if backbone.neck_kind == "fpn" else backbone.neck(x)
    counts["neck"] = counter.get_total_flops()
    backbone.train(was_training)
    return counts
