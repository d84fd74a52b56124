"""A tiny ResNet-style backbone (He et al. 2016) for 64-256 px images, random init.

Layout: a stride-2 3x3 stem, then four stages of basic residual blocks with strides
2, 2, 2, 2, so the stages output C2..C5 at strides 4, 8, 16 and 32. Detection uses C3-C5.
Widths default to 16/32/64/128 (orig. ResNet-50: 256/512/1024/2048 bottleneck outputs).
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> Conv2dNormActivation:
    """3x3 conv (no bias) -> BatchNorm -> ReLU; state_dict keys ``0.weight``, ``1.weight``, ... as a Sequential."""
    return Conv2dNormActivation(in_channels, out_channels, 3, stride)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (1x1 projection when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv_bn_relu(in_channels, out_channels, stride)
        self.conv2 = Conv2dNormActivation(out_channels, out_channels, 3, activation_layer=None)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = Conv2dNormActivation(in_channels, out_channels, 1, stride, activation_layer=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class TinyResNet(nn.Module):
    """Stages C2..C5; ``forward`` returns the last ``num_outputs`` of them (default C3, C4, C5)."""

    def __init__(self, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1), stem_width: int | None = None,
                 num_outputs: int = 3):
        super().__init__()
        if len(widths) != 4 or len(blocks) != 4:
            raise ValueError(f"TinyResNet needs 4 widths and 4 block counts, got {widths} and {blocks}")
        if not 1 <= num_outputs <= 4:
            raise ValueError(f"num_outputs must be in 1..4, got {num_outputs}")
        stem_width = stem_width or widths[0]
        self.stem = conv_bn_relu(3, stem_width, stride=2)
        stages, in_channels = [], stem_width
        for width, count in zip(widths, blocks):
            layers = [BasicBlock(in_channels, width, stride=2)]
            layers += [BasicBlock(width, width) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
            in_channels = width
        self.stages = nn.ModuleList(stages)
        self.num_outputs = num_outputs
        self.out_channels = list(widths[-num_outputs:])
        self.strides = [4, 8, 16, 32][-num_outputs:]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(images)  # (B, stem, H/2, W/2)
        outputs = []
        for stage in self.stages:
            x = stage(x)  # C2 (H/4) ... C5 (H/32)
            outputs.append(x)
        return outputs[-self.num_outputs:]
