"""DetNet's bottlenecks and backbone (kit.nn.detnet).

The catalog's invariants: stages 4-6 of DetNet are all H/16 (the baseline's 5 and 6 are H/32 and
H/64); a dilated 3x3 with padding = dilation keeps the map's size; the B block's shortcut is a
conv even when the channel counts match (and changes the output), A's is the identity; the ERF
grows with the dilation while the resolution stays fixed. Agreement with torchvision's ResNet
``Bottleneck`` (same weights, same dilation: the same output); the FLOPs of the two backbones
matched within 10 % (FlopCounterMode); both plug into the chapter's two-stage detector.
"""
import pytest
import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from kit.analysis.erf import effective_receptive_field, erf_radius
from kit.det.roi_heads import FasterRCNNHead
from kit.det.two_stage import two_stage_detector
from kit.nn.detnet import DetNetBottleneck, TinyDetNet, resnet_style_backbone, stage_flops, tiny_detnet


@pytest.mark.parametrize("size", [64, 96, 128, 100])
def test_stages_4_to_6_keep_stride_16_and_the_baseline_halves(size):
    torch.manual_seed(0)
    images = torch.rand(2, 3, size, size)
    detnet, baseline = tiny_detnet().eval(), resnet_style_backbone().eval()
    maps = detnet(images, return_stages=True)
    c4 = maps["C4"].shape[-2:]
    assert maps["C5"].shape[-2:] == c4 == maps["C6"].shape[-2:] == maps["out"].shape[-2:]
    assert c4 == torch.Size([-(-size // 16)] * 2)  # H/16, rounded up by the stride-2 3x3s
    assert detnet.stride == 16 and detnet.stage_strides_px == [4, 8, 16, 16, 16]
    base = baseline(images, return_stages=True)
    assert base["C4"].shape == maps["C4"].shape
    assert base["C5"].shape[-1] == -(-c4[-1] // 2) and base["C6"].shape[-1] == -(-base["C5"].shape[-1] // 2)
    assert baseline.stride == 64 and baseline.stage_strides_px == [4, 8, 16, 32, 64]
    assert detnet(images).shape == (2, detnet.out_channels, *c4)
    assert baseline(images).shape[1] == detnet.out_channels  # the same head input


@pytest.mark.parametrize("dilation", [1, 2, 3])
@pytest.mark.parametrize("hw", [(8, 8), (7, 5), (3, 4)])
def test_dilated_3x3_with_padding_equal_to_dilation_keeps_the_size(dilation, hw):
    block = DetNetBottleneck(8, 8, dilation=dilation)
    assert block.conv2.padding == (dilation, dilation) and block.dilation == dilation
    assert block(torch.rand(2, 8, *hw)).shape == (2, 8, *hw)
    block.set_dilation(dilation + 1)
    assert block.conv2.padding == (dilation + 1,) * 2 and block(torch.rand(1, 8, *hw)).shape == (1, 8, *hw)


def test_b_shortcut_is_a_conv_even_when_channels_match_and_a_is_identity():
    stage5 = tiny_detnet().stages[3]
    first, second = stage5[0], stage5[1]
    assert first.conv1.in_channels == first.conv3.out_channels  # channels match ...
    assert isinstance(first.shortcut, nn.Sequential) and isinstance(first.shortcut[0], nn.Conv2d)  # ... still a conv
    assert first.shortcut[0].kernel_size == (1, 1) and first.shortcut[0].bias is None
    assert isinstance(first.shortcut[1], nn.BatchNorm2d) and isinstance(second.shortcut, nn.Identity)
    assert all(m.bias is None for m in stage5.modules() if isinstance(m, nn.Conv2d))  # bias-free convs
    # With the body switched off (last BN scale 0), A passes relu(x) and B relu(BN(conv1x1(x))).
    x = torch.randn(2, 64, 5, 5)
    for block in (first, second):
        nn.init.zeros_(block.bn3.weight)
        block.eval()
    assert torch.allclose(second(x), torch.relu(x))
    with torch.no_grad():
        assert torch.allclose(first(x), torch.relu(first.shortcut(x))) and not torch.allclose(first(x), torch.relu(x))


@pytest.mark.parametrize("dilation, stride", [(2, 1), (1, 1), (1, 2)])
def test_bottleneck_agrees_with_torchvision_bottleneck(dilation, stride):
    """torchvision's ResNet Bottleneck (width = planes, out = 4 planes, stride and dilation on the 3x3)
    with our weights gives our output, in train mode (batch statistics) and in eval mode."""
    torch.manual_seed(1)
    ours = DetNetBottleneck(32, 32, dilation=dilation, stride=stride, projection=True)
    theirs = Bottleneck(32, 8, stride=stride, dilation=dilation,
                        downsample=nn.Sequential(nn.Conv2d(32, 32, 1, stride, bias=False), nn.BatchNorm2d(32)))
    mapping = {"shortcut.": "downsample."}
    state = {next((k.replace(a, b) for a, b in mapping.items() if k.startswith(a)), k): v
             for k, v in ours.state_dict().items()}
    theirs.load_state_dict(state)
    x = torch.randn(3, 32, 9, 9)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_erf_grows_with_dilation_at_fixed_resolution():
    torch.manual_seed(2)
    model = tiny_detnet().eval()
    images = torch.rand(4, 3, 128, 128)
    centres = torch.full((4, 2), 64.0)
    radius = {}
    for d in (1, 2, 3):
        model.set_dilation(d)
        assert model(images).shape[-2:] == (8, 8)  # the resolution does not change
        erf = effective_receptive_field(model, images, torch.full((4, 2), 4.0), per_image=True)
        radius[d] = erf_radius(erf, centres, mass=0.9).mean().item()
    assert radius[1] < radius[2] < radius[3], radius


def test_flops_of_the_two_backbones_match_within_ten_percent():
    for size in (64, 128):
        detnet, baseline = stage_flops(tiny_detnet(), size), stage_flops(resnet_style_backbone(), size)
        for part in ("stem", "C2", "C3", "C4"):
            assert detnet[part] == baseline[part]  # stages 1-4 are the same
        extra = (baseline["C5"] + baseline["C6"]) / (detnet["C5"] + detnet["C6"])
        total = sum(baseline.values()) / sum(detnet.values())
        assert 0.9 <= extra <= 1.1 and 0.9 <= total <= 1.1, (extra, total)
    # stage 5 by hand: h w (C C/4 + 9 C^2/16 + C^2/4 + C^2) multiply-adds for B, h w (17/16) C^2 for A
    c, hw = 64, 8 * 8
    assert stage_flops(tiny_detnet(), 128)["C5"] == 2 * hw * (c * c // 4 + 9 * c * c // 16 + c * c // 4 + c * c) \
        + 2 * hw * 17 * c * c // 16


def test_both_backbones_plug_into_the_two_stage_detector():
    torch.manual_seed(3)
    images = torch.rand(2, 3, 96, 96)
    boxes = [torch.tensor([[4.0, 6.0, 20.0, 18.0], [30.0, 20.0, 90.0, 85.0]]), torch.tensor([[10.0, 10.0, 50.0, 40.0]])]
    labels = [torch.tensor([0, 1]), torch.tensor([2])]
    for backbone, stride in ((tiny_detnet(), 16), (resnet_style_backbone(), 64)):
        assert isinstance(backbone, TinyDetNet) and backbone.stride == stride
        model = two_stage_detector(FasterRCNNHead, 3, seed=0, backbone=backbone, fc_channels=32)
        losses = model.loss(images, boxes, labels)
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        assert backbone.stages[4][0].conv2.weight.grad.abs().sum() > 0  # the last stage learns
        detections = model.detect(images)
        assert len(detections) == 2 and all(d["boxes"].shape[1] == 4 for d in detections)
