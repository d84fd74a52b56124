"""ThunderNet's pieces (kit.nn.snet, kit.det.thundernet).

Invariants from the catalog entry: SNet's depthwise convs are 5 x 5 and its C4 / C5 sit at strides
16 / 32 (and its unit is torchvision's ShuffleNetV2 unit when the kernel is 3 x 3); the CEM gives
(N, 245, H/16, W/16) for any input divisible by 32, its global term is spatially constant and its
C5 term is a nearest upsampling; SAM's attention lies in (0, 1), so |F_SAM| <= |F_CEM|; PSRoIAlign
maps 245 channels to (K, 5, 7, 7) with torchvision's bin-to-channel order; the R-CNN loss alone
reaches SAM and the light RPN (the RPN feature is not detached) while the RPN loss alone does not
reach SAM's conv; FLOPs counted by FlopCounterMode agree with the formula of 1 x 1 convs.
"""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.shufflenetv2 import InvertedResidual

from kit.det.thundernet import ContextEnhancement, SpatialAttention, ThunderNetHead, thundernet
from kit.nn.snet import SNet, ShuffleUnit
from kit.ops.ps_roi_align import bin_channel_map, ps_roi_align as kit_ps_roi_align

SMALL = dict(rpn_channels=32, fc_channels=32, anchor_sizes=(16, 32, 64), aspect_ratios=(0.5, 1.0, 2.0),
             detector_options=dict(num_rois=16))


def depthwise_convs(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]


@pytest.mark.parametrize("size", [(64, 64), (96, 160), (160, 160)])
def test_snet_gives_c4_and_c5_at_strides_16_and_32(size):
    snet = SNet(outputs=("C3", "C4", "C5")).eval()
    maps = snet(torch.rand(2, 3, *size))
    assert snet.strides == [8, 16, 32] and snet.out_channels == [48, 96, 192]
    for m, stride, channels in zip(maps, snet.strides, snet.out_channels):
        assert m.shape == (2, channels, size[0] // stride, size[1] // stride)
    assert SNet(conv5_channels=64).out_channels == [96, 64]


def test_every_depthwise_conv_of_snet_and_of_the_light_rpn_is_5x5():
    model = thundernet(3, seed=0, **SMALL)
    convs = depthwise_convs(model)
    assert len(convs) == 16 + 3 + 1  # one per SNet unit, one more per stage (its stride-2 unit), one in the light RPN
    assert all(c.kernel_size == (5, 5) and c.groups == c.in_channels == c.out_channels for c in convs)


def test_the_unit_with_a_3x3_kernel_is_torchvisions_shufflenet_unit():
    for stride, in_channels in ((2, 24), (1, 48)):
        ours, theirs = ShuffleUnit(in_channels, 48, stride, kernel_size=3).eval(), InvertedResidual(in_channels, 48, stride).eval()
        mine, tv = ours.state_dict(), theirs.state_dict()
        assert [v.shape for v in mine.values()] == [v.shape for v in tv.values()]
        ours.load_state_dict(dict(zip(mine, tv.values())))
        x = torch.randn(2, in_channels, 16, 16)
        torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("size", [(64, 64), (96, 128), (160, 160), (192, 224)])
def test_cem_output_is_245_channels_at_stride_16(size):
    snet = SNet().eval()
    c4, c5 = snet(torch.rand(1, 3, *size))
    assert ContextEnhancement(96, 192)(c4, c5).shape == (1, 245, size[0] // 16, size[1] // 16)


def test_cem_terms_global_is_constant_and_c5_is_a_nearest_upsampling():
    cem = ContextEnhancement(8, 16, out_channels=49)
    c4, c5 = torch.randn(2, 8, 6, 8), torch.randn(2, 16, 3, 4)
    terms = cem.term_maps(c4, c5)
    assert terms["global"].shape == (2, 49, 1, 1)
    rest = cem(c4, c5) - terms["C4"] - terms["C5"]  # the global term, broadcast
    torch.testing.assert_close(rest, rest[..., :1, :1].expand_as(rest))
    torch.testing.assert_close(terms["C5"][..., ::2, ::2], cem.c5(c5))
    torch.testing.assert_close(terms["C5"][..., 1::2, 1::2], cem.c5(c5))
    plain = ContextEnhancement(8, 16, out_channels=49, terms=("C4",))
    assert plain.c5 is None and torch.equal(plain(c4, c5), plain.c4(c4))


def test_sam_weights_lie_in_0_1_so_f_sam_is_never_larger_than_f_cem():
    sam = SpatialAttention(16, 49).train()
    cem, rpn = 3 * torch.randn(2, 49, 5, 5), 5 * torch.randn(2, 16, 5, 5)
    weights = sam.attention(rpn)
    assert (weights > 0).all() and (weights < 1).all()
    assert (sam(cem, rpn).abs() <= cem.abs()).all()


def test_ps_roi_align_of_245_channels_is_k_5_7_7_in_torchvisions_bin_order():
    head = ThunderNetHead(3, 245)
    features = torch.randn(1, 245, 10, 10)
    boxes = [torch.tensor([[8.0, 8.0, 120.0, 100.0], [0.0, 0.0, 160.0, 160.0]])]
    pooled = head.pool(features, boxes, (160, 160))
    assert pooled.shape == (2, 5, 7, 7) and head.alpha == 5
    torch.testing.assert_close(pooled, kit_ps_roi_align(features, boxes, 7, 1 / 16, 2), rtol=1e-5, atol=1e-6)
    # bin (i, j) of channel c reads only input channel (c * 7 + i) * 7 + j: a map non-zero on that channel only
    c, i, j = 2, 3, 5
    channel = int(bin_channel_map(7, 7, 245)[i, j, c])
    assert channel == (c * 7 + i) * 7 + j
    one = torch.zeros(1, 245, 10, 10)
    one[0, channel] = 1.0
    hit = head.pool(one, boxes[:1], (160, 160))[0].abs() > 0
    assert hit[c, i, j] and hit.sum() == 1


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, 96, 96, generator=g)
    return images, [torch.tensor([[10.0, 12.0, 60.0, 70.0]]), torch.tensor([[30.0, 20.0, 90.0, 80.0]])], \
        [torch.tensor([0]), torch.tensor([2])]


def test_the_rcnn_loss_alone_reaches_sam_and_the_light_rpn():
    model = thundernet(3, seed=0, **SMALL)
    losses = model.loss(*batch())
    (losses["cls"] + losses["box"]).backward()  # the RPN's loss zeroed
    for weight in (model.sam.conv.weight, model.rpn_feature.pointwise.weight, model.rpn_feature.depthwise.weight):
        assert weight.grad is not None and weight.grad.abs().sum() > 0
    assert model.rpn.head.cls_logits.weight.grad is None  # the RPN's predictors get nothing from the R-CNN loss
    model.zero_grad(set_to_none=True)
    losses = model.loss(*batch())
    (losses["rpn_objectness"] + losses["rpn_box"]).backward()
    assert model.sam.conv.weight.grad is None and model.rpn_feature.pointwise.weight.grad.abs().sum() > 0


def test_the_switches_keep_every_shared_weight_of_a_seed():
    full, plain = thundernet(3, seed=0, **SMALL), thundernet(3, seed=0, cem=False, sam=False, **SMALL)
    assert plain.sam is None and plain.backbone.cem.terms == ("C4",)
    shared = plain.state_dict()
    for name, value in full.state_dict().items():
        if name in shared:
            assert torch.equal(value, shared[name]), name
    assert all(k in full.state_dict() for k in shared)
    assert set(full.state_dict()) - set(shared) and all(
        ".c5." in k or ".glb." in k or k.startswith("sam.") for k in set(full.state_dict()) - set(shared))


def conv1x1_flops(batch, cells, in_channels, out_channels):
    return 2 * batch * cells * in_channels * out_channels  # FlopCounterMode counts a multiply-add as 2


def test_cem_flops_are_those_of_its_three_1x1_convs():
    cem = ContextEnhancement(96, 192)
    c4, c5 = torch.randn(1, 96, 10, 10), torch.randn(1, 192, 5, 5)
    with FlopCounterMode(display=False) as counter:
        cem(c4, c5)
    expected = conv1x1_flops(1, 100, 96, 245) + conv1x1_flops(1, 25, 192, 245) + conv1x1_flops(1, 1, 192, 245)
    assert counter.get_total_flops() == expected


def test_detection_runs_and_cem_sam_add_few_flops():
    flops = {}
    for cem, sam in ((True, True), (False, False)):
        model = thundernet(3, seed=0, cem=cem, sam=sam, **SMALL).eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            detections = model(batch()[0])
        flops[cem] = counter.get_total_flops()
        assert len(detections) == 2 and set(detections[0]) == {"boxes", "scores", "labels"}
    assert flops[False] < flops[True] < 1.2 * flops[False]
