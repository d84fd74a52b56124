"""Position-sensitive RoIAlign (kit.ops.ps_roi_align) against torchvision.ops.ps_roi_align.

Forward and feature gradient agree to 1e-10 in float64 and 1e-5 in float32 over output sizes,
sampling ratios (fixed and adaptive), spatial scales 1 and 1/16, boxes partly or wholly off the
map and tiny boxes; then the channel-group invariants and the edge cases.
"""
import pytest
import torch
from torchvision.ops import ps_roi_align as tv_ps_roi_align
from torchvision.ops import roi_align as tv_roi_align

from kit.ops.ps_roi_align import bin_channel_map, ps_roi_align

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
HEIGHT, WIDTH = 9, 11


def random_rois(num_rois, num_images, spatial_scale, dtype, seed=0):
    """(K, 5) rois in image pixels: corners from 2 map pixels before the map to 3 past it, sizes
    0.05 to 6 map pixels (tiny boxes included), a few boxes wholly off the map."""
    gen = torch.Generator().manual_seed(seed)
    corner = torch.rand(num_rois, 2, generator=gen, dtype=dtype) * torch.tensor([WIDTH + 5.0, HEIGHT + 5.0], dtype=dtype) - 2
    size = 0.05 + 6 * torch.rand(num_rois, 2, generator=gen, dtype=dtype)
    size[: num_rois // 4] *= 0.02  # tiny: a fraction of a map pixel
    xyxy = torch.cat([corner, corner + size], 1) / spatial_scale
    xyxy[-1] = torch.tensor([-30.0, -30.0, -20.0, -25.0], dtype=dtype) / spatial_scale  # off the map
    batch_index = torch.randint(0, num_images, (num_rois, 1), generator=gen).to(dtype)
    return torch.cat([batch_index, xyxy], 1)


CASES = [  # output_size, sampling_ratio, spatial_scale
    (7, 2, 1 / 16), (7, -1, 1 / 16), (3, 1, 1.0), (3, -1, 1.0), (2, 2, 1.0), ((3, 2), 2, 1 / 16),
    ((2, 4), -1, 1.0), (1, 0, 1.0),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("output_size, sampling_ratio, spatial_scale", CASES)
def test_forward_and_feature_gradient_match_torchvision(dtype, output_size, sampling_ratio, spatial_scale):
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(2, 3 * ph * pw, HEIGHT, WIDTH, generator=gen, dtype=dtype, requires_grad=True)
    rois = random_rois(24, 2, spatial_scale, dtype)
    ours = ps_roi_align(features, rois, output_size, spatial_scale, sampling_ratio)
    reference = tv_ps_roi_align(features, rois, output_size, spatial_scale, sampling_ratio)
    assert ours.shape == reference.shape == (24, 3, ph, pw) and ours.dtype == dtype
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(ours, reference, atol=tol, rtol=0)
    assert (ours[-1] == 0).all()  # the box off the map reads zeros
    weights = torch.randn(ours.shape, generator=gen, dtype=dtype)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), features)
    (grad_reference,) = torch.autograd.grad((reference * weights).sum(), features)
    torch.testing.assert_close(grad_ours, grad_reference, atol=tol, rtol=0)


def test_list_of_boxes_equals_the_roi_tensor():
    gen = torch.Generator().manual_seed(2)
    features = torch.randn(3, 2 * 9, HEIGHT, WIDTH, generator=gen, dtype=torch.float64)
    per_image = [torch.tensor([[1.0, 2.0, 6.5, 7.0], [0.0, 0.0, 3.0, 2.0]], dtype=torch.float64),
                 torch.zeros(0, 4, dtype=torch.float64),  # an image without RoIs
                 torch.tensor([[4.0, 1.0, 10.0, 8.5]], dtype=torch.float64)]
    rois = torch.tensor([[0, 1.0, 2.0, 6.5, 7.0], [0, 0.0, 0.0, 3.0, 2.0], [2, 4.0, 1.0, 10.0, 8.5]],
                        dtype=torch.float64)
    ours = ps_roi_align(features, per_image, 3)
    assert torch.equal(ours, ps_roi_align(features, rois, 3))
    torch.testing.assert_close(ours, tv_ps_roi_align(features, per_image, 3, 1.0, 2), atol=1e-10, rtol=0)
    assert torch.equal(ps_roi_align(features.to(memory_format=torch.channels_last), per_image, 3), ours)


def test_each_bin_reads_the_channel_given_by_bin_channel_map():
    """Channel k constant k: output channel c in bin (i, j) equals map[i, j, c] = (c*ph + i)*pw + j,
    for any box (the map is constant, so every sample reads the plane's value, up to rounding)."""
    ph, pw, out_channels = 3, 2, 4
    features = torch.arange(out_channels * ph * pw, dtype=torch.float64).view(1, -1, 1, 1).expand(1, -1, 5, 6)
    rois = torch.tensor([[0, 0.5, 0.5, 4.0, 3.5], [0, 2.0, 1.0, 2.3, 1.1]], dtype=torch.float64)
    expected = bin_channel_map(ph, pw, out_channels * ph * pw).permute(2, 0, 1).double()  # (C, ph, pw)
    for result in (ps_roi_align(features, rois, (ph, pw)), tv_ps_roi_align(features, rois, (ph, pw), 1.0, 2)):
        torch.testing.assert_close(result, expected.expand(2, -1, -1, -1), atol=1e-12, rtol=0)
    assert torch.equal(bin_channel_map(ph, pw, out_channels * ph * pw)[..., 0], torch.arange(ph * pw).view(ph, pw))


def test_bin_reads_only_its_channel_group():
    """Group g (channels g, g + ph*pw, ...) constant g gives bin (i, j) the value i*pw + j in every
    output channel; changing every other group leaves that bin unchanged."""
    ph = pw = 3
    groups = (torch.arange(2 * ph * pw) % (ph * pw)).double()  # channel k is in group k mod ph*pw
    features = groups.view(1, -1, 1, 1).expand(1, -1, 7, 7).clone()
    rois = torch.tensor([[0, 1.0, 1.0, 5.0, 6.0]], dtype=torch.float64)
    out = ps_roi_align(features, rois, 3)  # (1, 2, 3, 3)
    torch.testing.assert_close(out, torch.arange(ph * pw).double().view(1, 1, ph, pw).expand(1, 2, -1, -1),
                               atol=1e-12, rtol=0)
    gen = torch.Generator().manual_seed(6)
    noisy = features + torch.randn(features.shape, generator=gen, dtype=torch.float64) * (groups.view(1, -1, 1, 1) != 4)
    assert torch.equal(ps_roi_align(noisy, rois, 3)[..., 1, 1], out[..., 1, 1])  # group 4 = bin (1, 1)


def test_copies_of_one_group_give_roi_align_with_half_pixel_shift():
    """With every group holding the same C channels, PSRoIAlign is RoIAlign with aligned=True:
    torchvision's ps_roi_align always shifts by half a pixel and never clamps the RoI size."""
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(2, 3, HEIGHT, WIDTH, generator=gen, dtype=torch.float64)
    features = base.repeat_interleave(4, dim=1)  # channel (c*2 + i)*2 + j = base channel c
    rois = random_rois(12, 2, 1 / 16, torch.float64, seed=4)
    for sampling_ratio in (2, -1):
        ours = ps_roi_align(features, rois, 2, 1 / 16, sampling_ratio)
        aligned = tv_roi_align(base, rois, 2, 1 / 16, sampling_ratio, aligned=True)
        torch.testing.assert_close(ours, aligned, atol=1e-12, rtol=0)
        unaligned = tv_roi_align(base, rois, 2, 1 / 16, sampling_ratio, aligned=False)
        assert (ours - unaligned).abs().max() > 1e-3


def test_constant_input_gives_constant_output_on_the_map():
    features = torch.full((1, 2 * 49, 6, 6), 2.5, dtype=torch.float64)
    rois = torch.tensor([[0, 0.0, 0.0, 96.0, 96.0], [0, 10.0, 20.0, 40.0, 30.0]], dtype=torch.float64)
    assert torch.allclose(ps_roi_align(features, rois, 7, 1 / 16), torch.tensor(2.5, dtype=torch.float64))


def test_empty_boxes_give_an_empty_output_with_a_gradient():
    features = torch.randn(2, 2 * 9, 5, 5, requires_grad=True)
    for boxes in (torch.zeros(0, 5), [torch.zeros(0, 4), torch.zeros(0, 4)]):
        out = ps_roi_align(features, boxes, 3, 1 / 16, -1)
        assert out.shape == (0, 2, 3, 3) and out.dtype == features.dtype
        assert out.shape == tv_ps_roi_align(features, boxes, 3, 1 / 16, -1).shape
        (grad,) = torch.autograd.grad(out.sum(), features)
        assert torch.equal(grad, torch.zeros_like(features))


def test_zero_width_box_in_adaptive_mode_takes_one_sample_where_torchvision_gives_nan():
    gen = torch.Generator().manual_seed(5)
    features = torch.randn(1, 4, 6, 6, generator=gen, dtype=torch.float64)
    rois = torch.tensor([[0, 2.0, 1.0, 2.0, 2.5]], dtype=torch.float64)  # x2 == x1; height 1.5 -> 1 sample
    assert tv_ps_roi_align(features, rois, 2, 1.0, -1).isnan().all()  # torchvision: 0 / 0
    ours = ps_roi_align(features, rois, 2, 1.0, -1)
    torch.testing.assert_close(ours, tv_ps_roi_align(features, rois, 2, 1.0, 1), atol=1e-12, rtol=0)


def test_boxes_get_no_gradient_and_float32_boxes_work_on_float64_features():
    features = torch.randn(1, 9, 5, 5, dtype=torch.float64)
    rois = torch.tensor([[0, 0.5, 0.5, 3.5, 4.0]], requires_grad=True)
    out = ps_roi_align(features, rois, 3)
    assert out.dtype == torch.float64 and not out.requires_grad
    torch.testing.assert_close(out, tv_ps_roi_align(features, rois.detach().double(), 3, 1.0, 2), atol=1e-6, rtol=0)
