"""DetNet's bottlenecks and backbone (kit.nn.detnet).

The catalog's invariants: stages 4-6 of DetNet are all H/16 (the baseline's 5 and 6 are H/32 and
H/64); a dilated 3x3 with padding = dilation keeps the map's size; the B block's shortcut is a
conv even when the channel counts match (and changes the output), A's is the identity; the ERF
grows with the dilation while the resolution stays fixed. Agreement with torchvision's ResNet
``Bottleneck`` (same weights, same dilation: the same output); the FLOPs of the two backbones
matched within 10 % (FlopCounterMode); both plug into the chapter's two-stage detector. The
neck: P4 = P5 = P6 in shape for DetNet, where the top-down path is a plain sum of the laterals
(no upsampling); P4 agrees with a full ``torchvision.ops.FeaturePyramidNetwork`` call with the
same weights, for both backbones.
"""
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torchvision.models.resnet import Bottleneck
from torchvision.ops import FeaturePyramidNetwork

from kit.analysis.erf import effective_receptive_field, erf_radius
from kit.det.roi_heads import FasterRCNNHead
from kit.det.two_stage import two_stage_detector
from kit.nn.detnet import DetNetBottleneck, TinyDetNet, TopDownNeck, resnet_style_backbone, stage_flops, tiny_detnet


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
    assert baseline.stage_strides_px == [4, 8, 16, 32, 64]
    # with the FPN neck both detectors read a stride-16 map of the same shape (P4); without it, the last stage
    assert baseline.stride == 16 and detnet(images).shape == baseline(images).shape == (2, detnet.out_channels, *c4)
    single = resnet_style_backbone(neck="last").eval()
    assert single.stride == 64 and single(images).shape == (2, detnet.out_channels, *base["C6"].shape[-2:])
    assert tiny_detnet(neck="last").eval()(images).shape == (2, detnet.out_channels, *c4)


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

    def last_stage(x):
        return model(x, return_stages=True)["C6"]

    for d in (1, 2, 3):
        model.set_dilation(d)
        assert model(images).shape[-2:] == last_stage(images).shape[-2:] == (8, 8)  # the resolution does not change
        erf = effective_receptive_field(last_stage, images, torch.full((4, 2), 4.0), per_image=True)
        radius[d] = erf_radius(erf, centres, mass=0.9).mean().item()
    assert radius[1] < radius[2] < radius[3], radius


def test_flops_of_the_two_backbones_match_within_ten_percent():
    for size in (64, 128):
        detnet, baseline = stage_flops(tiny_detnet(), size), stage_flops(resnet_style_backbone(), size)
        for part in ("stem", "C2", "C3", "C4"):
            assert detnet[part] == baseline[part]  # stages 1-4 are the same
        extra = (baseline["C5"] + baseline["C6"]) / (detnet["C5"] + detnet["C6"])
        total = sum(v for k, v in baseline.items() if k != "neck") / sum(v for k, v in detnet.items() if k != "neck")
        assert 0.9 <= extra <= 1.1 and 0.9 <= total <= 1.1, (extra, total)
        assert 0.8 <= baseline["neck"] / detnet["neck"] <= 1.0  # the neck: the baseline's laterals at fewer cells
    # DetNet's neck by hand at 128 px (8 x 8 cells, 64 channels everywhere): three 1x1 laterals and one 3x3
    assert stage_flops(tiny_detnet(), 128)["neck"] == 2 * 64 * (3 + 9) * 64 * 64
    # stage 5 by hand: h w (C C/4 + 9 C^2/16 + C^2/4 + C^2) multiply-adds for B, h w (17/16) C^2 for A
    c, hw = 64, 8 * 8
    assert stage_flops(tiny_detnet(), 128)["C5"] == 2 * hw * (c * c // 4 + 9 * c * c // 16 + c * c // 4 + c * c) \
        + 2 * hw * 17 * c * c // 16


def test_both_backbones_plug_into_the_two_stage_detector():
    torch.manual_seed(3)
    images = torch.rand(2, 3, 96, 96)
    boxes = [torch.tensor([[4.0, 6.0, 20.0, 18.0], [30.0, 20.0, 90.0, 85.0]]), torch.tensor([[10.0, 10.0, 50.0, 40.0]])]
    labels = [torch.tensor([0, 1]), torch.tensor([2])]
    for backbone, stride in ((tiny_detnet(), 16), (resnet_style_backbone(), 16), (resnet_style_backbone(neck="last"), 64)):
        assert isinstance(backbone, TinyDetNet) and backbone.stride == stride
        model = two_stage_detector(FasterRCNNHead, 3, seed=0, backbone=backbone, fc_channels=32)
        losses = model.loss(images, boxes, labels)
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        assert backbone.stages[4][0].conv2.weight.grad.abs().sum() > 0  # the last stage learns
        detections = model.detect(images)
        assert len(detections) == 2 and all(d["boxes"].shape[1] == 4 for d in detections)


def test_detnet_neck_is_a_plain_sum_of_laterals_and_p4_p5_p6_have_one_shape():
    """C4, C5, C6 of DetNet are all stride 16: nearest upsampling to the same size is the identity, so
    P4 is the 3x3 of lateral(C4) + lateral(C5) + lateral(C6), and P5, P6 (the sums before their 3x3) match P4's shape."""
    torch.manual_seed(4)
    model = tiny_detnet().eval()
    with torch.no_grad():
        maps = model(torch.rand(2, 3, 96, 96), return_stages=True)
        fpn = model.neck.fpn
        laterals = [fpn.inner_blocks[i](maps[name]) for i, name in enumerate(("C4", "C5", "C6"))]
        assert all(lateral.shape == laterals[0].shape for lateral in laterals)
        assert torch.equal(torch.nn.functional.interpolate(laterals[2], size=laterals[1].shape[-2:], mode="nearest"),
                           laterals[2])
        by_hand = fpn.layer_blocks[0](laterals[0] + laterals[1] + laterals[2])
        pyramid = fpn(OrderedDict((name, maps[name]) for name in ("C4", "C5", "C6")))
    torch.testing.assert_close(maps["out"], by_hand, rtol=1e-5, atol=1e-5)
    assert pyramid["C4"].shape == pyramid["C5"].shape == pyramid["C6"].shape == maps["C4"][:, :64].shape


@pytest.mark.parametrize("make", [tiny_detnet, resnet_style_backbone])
def test_neck_agrees_with_a_full_torchvision_fpn(make):
    """A full FeaturePyramidNetwork over C4-C6 (3x3 output convs on every level) loaded with the neck's weights
    gives the neck's P4, with upsampling (the baseline: 6 <- 3 <- 2 cells at 96 px) and without (DetNet)."""
    torch.manual_seed(5)
    model = make().eval()
    with torch.no_grad():
        maps = model(torch.rand(2, 3, 96, 96), return_stages=True)
        channels = [maps[name].shape[1] for name in ("C4", "C5", "C6")]
        full = FeaturePyramidNetwork(channels, model.out_channels).eval()
        missing, unexpected = full.load_state_dict(model.neck.fpn.state_dict(), strict=False)
        assert not unexpected and all(k.startswith(("layer_blocks.1.", "layer_blocks.2.")) for k in missing)
        p4 = full(OrderedDict((name, maps[name]) for name in ("C4", "C5", "C6")))["C4"]
    torch.testing.assert_close(maps["out"], p4, rtol=1e-5, atol=1e-5)
    assert isinstance(model.neck, TopDownNeck) and maps["out"].shape[-2:] == maps["C4"].shape[-2:]
    assert sum(p.numel() for p in model.neck.parameters()) < sum(p.numel() for p in full.parameters())
