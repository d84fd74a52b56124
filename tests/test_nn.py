import pytest
import torch

from kit.nn.backbone import TinyResNet
from kit.nn.fpn import FPN


def test_backbone_strides_and_channels():
    net = TinyResNet((8, 16, 32, 64))
    outs = net(torch.randn(2, 3, 64, 64))
    assert [o.shape for o in outs] == [(2, 16, 8, 8), (2, 32, 4, 4), (2, 64, 2, 2)]
    assert net.strides == [8, 16, 32] and net.out_channels == [16, 32, 64]


def test_fpn_levels_share_channels():
    net = TinyResNet((8, 16, 32, 64))
    fpn = FPN(net.out_channels, 24)
    levels = fpn(net(torch.randn(1, 3, 96, 96)))
    assert [l.shape for l in levels] == [(1, 24, 12, 12), (1, 24, 6, 6), (1, 24, 3, 3)]


def test_backbone_rejects_bad_layouts():
    with pytest.raises(ValueError, match="4 widths"):
        TinyResNet((8, 16, 32))
