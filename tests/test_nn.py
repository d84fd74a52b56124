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


def test_backbone_keeps_its_checkpoint_keys_and_initial_weights():
    """Checkpoints load by name and the same seed gives the same start: the conv-BN(-ReLU) units
    are Sequentials indexed 0, 1(, 2) whose conv is drawn first, without bias."""
    torch.manual_seed(0)
    net = TinyResNet((8, 16, 32, 64))
    keys = set(net.state_dict())
    for key in ("stem.0.weight", "stem.1.running_mean", "stages.0.0.conv1.0.weight", "stages.0.0.conv1.1.bias",
                "stages.0.0.conv2.0.weight", "stages.0.0.conv2.1.weight", "stages.0.0.shortcut.0.weight",
                "stages.0.0.shortcut.1.num_batches_tracked"):
        assert key in keys, key
    assert not any(k.endswith("0.bias") and ".1." not in k for k in keys if k.startswith("stem.0"))
    torch.manual_seed(0)
    stem = torch.nn.Conv2d(3, 8, 3, 2, 1, bias=False)
    assert torch.equal(net.stem[0].weight, stem.weight)
    assert net.stem[0].padding == (1, 1) and net.stages[0][0].shortcut[0].padding == (0, 0)
