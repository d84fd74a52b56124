"""Feature Pyramid Network (Lin et al. 2017) over backbone stages, via torchvision.

A thin wrapper around :class:`torchvision.ops.FeaturePyramidNetwork` that takes and returns
plain lists (P3..P5 for C3..C5): lateral 1x1 convs, top-down nearest upsampling, 3x3 output convs.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork


class FPN(nn.Module):
    def __init__(self, in_channels: list[int], out_channels: int):
        super().__init__()
        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels)
        self.out_channels = out_channels

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        named = OrderedDict((str(i), f) for i, f in enumerate(features))
        return list(self.fpn(named).values())  # same strides as the inputs
