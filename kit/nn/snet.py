"""SNet, ThunderNet's backbone (Qin et al., arXiv 1903.11752): ShuffleNetV2 with 5 x 5 depthwise convs.

ShuffleNetV2 (Ma et al., arXiv 1807.11164) builds each stage from one unit: split the channels in
two, leave one half alone, pass the other through ``1x1 conv -> depthwise conv -> 1x1 conv``,
concatenate, and *shuffle* the channels so the two halves mix in the next unit. The first unit of
a stage halves the resolution and runs both halves through a branch (the left one a strided
depthwise conv + 1x1 conv). ThunderNet's one change for detection: every depthwise conv is
**5 x 5** instead of 3 x 3, which enlarges the receptive field for almost no FLOPs (a depthwise conv
is a small share of a unit's cost).

::

    images (B, 3, H, W) -> conv 3x3 s2 -> maxpool s2          (B, 24, H/4, W/4)
      -> stage 2 (4 units)                                     C3 (B, 48, H/8, W/8)
      -> stage 3 (8 units)                                     C4 (B, 96, H/16, W/16)
      -> stage 4 (4 units) [-> conv5 1x1 + BN + ReLU]          C5 (B, 192, H/32, W/32)

Choices at the kit's scale: the topology (repeats 4, 8, 4; widths 24, 48, 96, 192) is torchvision's
``shufflenet_v2_x0_5``, the depthwise kernels are 5 x 5 as in SNet. Like SNet146/535 (and unlike
SNet49, which compresses it to 512 channels) the last 1 x 1 ``conv5`` is dropped by default
(``conv5_channels=None``), so C5 is stage 4's output; torchvision's x0.5 ends with a 1024-channel
conv5 for classification. Random initialisation (PyTorch's defaults), no downloads. The channel
shuffle is torchvision's; the unit is written here because torchvision's has 3 x 3 depthwise convs
hard-coded.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.shufflenetv2 import channel_shuffle

__all__ = ["ShuffleUnit", "SNet", "STAGE_NAMES"]

STAGE_NAMES = ("C3", "C4", "C5")  # strides 8, 16, 32


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
             relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
              nn.BatchNorm2d(out_channels)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


def _depthwise(channels: int, kernel_size: int, stride: int) -> nn.Sequential:
    """A depthwise conv + BN, no activation (ShuffleNetV2's convention)."""
    return _conv_bn(channels, channels, kernel_size, stride, groups=channels, relu=False)


class ShuffleUnit(nn.Module):
    """One ShuffleNetV2 unit with a ``kernel_size`` depthwise conv: (B, in, h, w) -> (B, out, h/s, w/s).

    stride 1 (``in == out``): split in two halves, the right one through 1x1 -> dw k x k -> 1x1;
    stride 2: the whole input through both branches (left: dw k x k s2 -> 1x1). Then concat and
    shuffle with 2 groups.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, kernel_size: int = 5):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride!r}")
        if out_channels % 2 or (stride == 1 and in_channels != out_channels):
            raise ValueError(f"out_channels must be even, and equal to in_channels at stride 1; got in_channels="
                             f"{in_channels}, out_channels={out_channels}, stride={stride}")
        if kernel_size % 2 == 0 or kernel_size < 1:
            raise ValueError(f"kernel_size must be odd (so 'same' padding keeps the size), got {kernel_size}")
        half = out_channels // 2
        self.stride, self.kernel_size = stride, kernel_size
        self.left = (nn.Sequential(_depthwise(in_channels, kernel_size, 2), _conv_bn(in_channels, half))
                     if stride == 2 else nn.Identity())
        right_in = in_channels if stride == 2 else half
        self.right = nn.Sequential(_conv_bn(right_in, half), _depthwise(half, kernel_size, stride), _conv_bn(half, half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            kept, x = x.chunk(2, dim=1)  # (B, out/2, h, w) each
            out = torch.cat([kept, self.right(x)], dim=1)
        else:
            out = torch.cat([self.left(x), self.right(x)], dim=1)  # (B, out, h/2, w/2)
        return channel_shuffle(out, 2)


class SNet(nn.Module):
    """A tiny SNet: stem, three stages of :class:`ShuffleUnit`, optional conv5; returns C3-C5 as asked.

    ``outputs`` names the maps ``forward`` returns, in order (default C4 and C5, what ThunderNet
    uses); ``out_channels`` and ``strides`` list theirs.
    """

    def __init__(self, widths=(24, 48, 96, 192), repeats=(4, 8, 4), kernel_size: int = 5,
                 conv5_channels: int | None = None, outputs=("C4", "C5")):
        super().__init__()
        widths, repeats, outputs = tuple(widths), tuple(repeats), tuple(outputs)
        if len(widths) != 4 or len(repeats) != 3:
            raise ValueError(f"SNet needs 4 widths (stem, C3, C4, C5) and 3 repeats, got {widths} and {repeats}")
        if not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in repeats):
            raise ValueError(f"repeats must be ints >= 1, got {repeats}")
        if not outputs or any(name not in STAGE_NAMES for name in outputs):
            raise ValueError(f"outputs must be a non-empty sequence of {STAGE_NAMES}, got {outputs}")
        if conv5_channels is not None and (not isinstance(conv5_channels, int) or conv5_channels < 1):
            raise ValueError(f"conv5_channels must be None or an int >= 1, got {conv5_channels!r}")
        self.stem = nn.Sequential(_conv_bn(3, widths[0], 3, stride=2), nn.MaxPool2d(3, 2, 1))  # stride 4
        stages, in_channels = [], widths[0]
        for width, count in zip(widths[1:], repeats):
            units = [ShuffleUnit(in_channels, width, 2, kernel_size)]
            units += [ShuffleUnit(width, width, 1, kernel_size) for _ in range(count - 1)]
            stages.append(nn.Sequential(*units))
            in_channels = width
        self.stages = nn.ModuleList(stages)
        self.conv5 = _conv_bn(widths[3], conv5_channels) if conv5_channels else nn.Identity()
        channels = {"C3": widths[1], "C4": widths[2], "C5": conv5_channels or widths[3]}
        self.outputs = outputs
        self.out_channels = [channels[name] for name in outputs]
        self.strides = [{"C3": 8, "C4": 16, "C5": 32}[name] for name in outputs]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (B, 3, H, W) -> the maps named in ``outputs`` [(B, C_s, H/s, W/s)]."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        x = self.stem(images)  # (B, 24, H/4, W/4)
        maps = {}
        for name, stage in zip(STAGE_NAMES, self.stages):
            x = stage(x)
            maps[name] = x
        maps["C5"] = self.conv5(maps["C5"])
        return [maps[name] for name in self.outputs]
