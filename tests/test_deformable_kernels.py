"""Deformable Kernels (kit.ops.deformable_kernels) against a slow loop of the paper's formula."""
import pytest
import torch
import torch.nn.functional as F

from kit.ops.deformable_kernels import (DeformableKernel2d, deformable_kernel_conv2d, sample_kernels,
                                        scope_coordinates)
from test_deform_conv import bilinear_scalar  # the textbook four-corner rule, one value at a time

DOUBLE = torch.float64


# The official kernel sampler (zero unless -1 < h < S and -1 < w < S, corners outside count 0) is
# the textbook rule of the DCN tests: outside (-1, S) both corners fall outside the plane.
planar_bilinear = bilinear_scalar


def loop_dk(x, kernel_offset, scope, k, stride, padding, dilation, image_offset=None):
    """O_j = sum_k I_{j+k(+dp_k)} W(k + dk_j), one output at a time, with the official conventions."""
    b, c, h, w = x.shape
    s_h, s_w = scope.shape[2:]
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ho, wo = kernel_offset.shape[2:]
    groups = kernel_offset.shape[1] // (2 * k * k)
    out = torch.zeros(b, c, ho, wo, dtype=x.dtype)
    for n in range(b):
        for ch in range(c):
            g = ch % groups
            for oy in range(ho):
                for ox in range(wo):
                    total = 0.0
                    for i in range(k):
                        for j in range(k):
                            t = i * k + j
                            kh_ = i + float(kernel_offset[n, (g * k * k + t) * 2, oy, ox]) + (s_h - k) / 2
                            kw_ = j + float(kernel_offset[n, (g * k * k + t) * 2 + 1, oy, ox]) + (s_w - k) / 2
                            weight = planar_bilinear(scope[ch, 0], kh_, kw_)
                            y, xx = sh * oy - ph + dh * i, sw * ox - pw + dw * j
                            if image_offset is None:
                                value = float(x[n, ch, y, xx]) if (0 <= y < h and 0 <= xx < w) else 0.0
                            else:
                                value = planar_bilinear(x[n, ch], y + float(image_offset[n, 2 * t, oy, ox]),
                                                        xx + float(image_offset[n, 2 * t + 1, oy, ox]))
                            total += value * weight
                    out[n, ch, oy, ox] = total
    return out


def case(seed=0, b=2, c=4, hw=(6, 5), k=3, scope=4, groups=2, stride=(1, 2), padding=(1, 0), dilation=(2, 1)):
    g = torch.Generator().manual_seed(seed)
    ho = (hw[0] + 2 * padding[0] - dilation[0] * (k - 1) - 1) // stride[0] + 1
    wo = (hw[1] + 2 * padding[1] - dilation[1] * (k - 1) - 1) // stride[1] + 1
    x = torch.randn(b, c, *hw, generator=g, dtype=DOUBLE)
    kernel_offset = 1.5 * torch.randn(b, groups * k * k * 2, ho, wo, generator=g, dtype=DOUBLE)
    image_offset = torch.randn(b, 2 * k * k, ho, wo, generator=g, dtype=DOUBLE)
    scope_weight = torch.randn(c, 1, scope, scope, generator=g, dtype=DOUBLE)
    return x, kernel_offset, image_offset, scope_weight, (stride, padding, dilation)


@pytest.mark.parametrize("params", [dict(), dict(k=2, scope=3, groups=1, stride=(2, 1), padding=(0, 1), dilation=(1, 1)),
                                    dict(c=6, k=3, scope=5, groups=3, stride=(1, 1), padding=(1, 1), dilation=(1, 1))])
@pytest.mark.parametrize("with_dcn", [False, True])
def test_matches_the_loop(params, with_dcn):
    x, kernel_offset, image_offset, scope_weight, geometry = case(**params)
    k = params.get("k", 3)
    image_offset = image_offset if with_dcn else None
    ours = deformable_kernel_conv2d(x, kernel_offset, scope_weight, k, *geometry, image_offset=image_offset)
    torch.testing.assert_close(ours, loop_dk(x, kernel_offset, scope_weight, k, *geometry, image_offset))


def test_kernel_sampling_matches_grid_sample():
    """Scope sampling is grid_sample(align_corners=True, zeros) in scope pixel coordinates."""
    _, kernel_offset, _, scope_weight, _ = case(groups=1)
    coords = scope_coordinates(kernel_offset, 3, 4)  # (B, 1, 9, 2, Ho, Wo)
    sampled = sample_kernels(scope_weight, coords)  # (B, C, 9, L)
    b = kernel_offset.shape[0]
    grid = torch.stack([coords[:, 0, :, 1], coords[:, 0, :, 0]], dim=-1).flatten(2, 3) * (2 / 3) - 1  # (B, 9, L, 2)
    expected = F.grid_sample(scope_weight[None, :, 0].expand(b, -1, -1, -1), grid, align_corners=True,
                             padding_mode="zeros")
    torch.testing.assert_close(sampled, expected)


def test_scope_equal_to_kernel_with_zero_offsets_is_a_depthwise_conv():
    x, kernel_offset, _, _, (stride, padding, dilation) = case(groups=1)
    weight = torch.randn(4, 1, 3, 3, dtype=DOUBLE)
    out = deformable_kernel_conv2d(x, torch.zeros_like(kernel_offset), weight, 3, stride, padding, dilation)
    torch.testing.assert_close(out, F.conv2d(x, weight, None, stride, padding, dilation, groups=4))


def test_uniform_integer_shift_uses_the_shifted_sub_kernel():
    x, kernel_offset, _, scope_weight, (stride, padding, dilation) = case(groups=1, scope=5)
    offset = torch.zeros_like(kernel_offset)
    offset[:, 0::2], offset[:, 1::2] = 1.0, -1.0  # every tap one row down and one column left
    # S=5, K=3: taps start at (1, 1); shifted by (+1, -1) they read rows 2..4, columns 0..2
    sub_kernel = scope_weight[:, :, 2:5, 0:3]
    out = deformable_kernel_conv2d(x, offset, scope_weight, 3, stride, padding, dilation)
    torch.testing.assert_close(out, F.conv2d(x, sub_kernel, None, stride, padding, dilation, groups=4))


def test_linear_in_the_scope_kernel():
    x, kernel_offset, _, w1, geometry = case()
    w2 = torch.randn_like(w1)
    out = lambda w: deformable_kernel_conv2d(x, kernel_offset, w, 3, *geometry)
    torch.testing.assert_close(out(2 * w1 - w2), 2 * out(w1) - out(w2))


def test_theoretical_receptive_field_is_rigid():
    """The input gradient of one output is zero outside its K x K window, whatever the kernel offsets."""
    torch.manual_seed(0)
    layer = DeformableKernel2d(3, 3, scope_size=4, padding=1).double()
    torch.nn.init.normal_(layer.kernel_offset_conv.weight, std=1.0)
    x = torch.randn(1, 3, 9, 9, dtype=DOUBLE, requires_grad=True)
    layer(x)[0, :, 4, 4].sum().backward()
    support = x.grad.abs().sum(1)[0] > 0
    outside = support.clone()
    outside[3:6, 3:6] = False
    assert support[3:6, 3:6].any() and not outside.any()


def test_gradcheck_away_from_knots():
    x, kernel_offset, image_offset, scope_weight, geometry = case(b=1, c=2, hw=(4, 4), groups=1)
    kernel_offset = kernel_offset.floor() + 0.3 + 0.4 * torch.rand_like(kernel_offset)
    image_offset = image_offset.floor() + 0.3 + 0.4 * torch.rand_like(image_offset)
    args = [t.clone().requires_grad_() for t in (x, kernel_offset, scope_weight, image_offset)]
    fn = lambda x_, k_, w_, i_: deformable_kernel_conv2d(x_, k_, w_, 3, *geometry, image_offset=i_)
    assert torch.autograd.gradcheck(fn, args, fast_mode=True)


def test_global_dk_with_fixed_coordinates_is_a_plain_depthwise_conv():
    torch.manual_seed(0)
    layer = DeformableKernel2d(4, kernel_size=1, scope_size=2, mode="global")
    x = torch.randn(3, 4, 5, 5)
    # zero-initialised: every image reads the centre of the 2x2 scope = the mean of its 4 values
    expected = F.conv2d(x, layer.weight.mean(dim=(2, 3), keepdim=True), groups=4)
    torch.testing.assert_close(layer(x), expected)
    # a constant bias on the fc moves every image's tap the same way: still one plain conv
    with torch.no_grad():
        layer.kernel_offset_fc.bias.copy_(torch.tensor([-0.5, 0.5]))  # -> scope pixel (0, 1)
    torch.testing.assert_close(layer(x), F.conv2d(x, layer.weight[:, :, 0:1, 1:2], groups=4))
    # coordinates are clamped to the scope, as the official global DK
    with torch.no_grad():
        layer.kernel_offset_fc.bias.copy_(torch.tensor([-5.0, 5.0]))
    torch.testing.assert_close(layer(x), F.conv2d(x, layer.weight[:, :, 0:1, 1:2], groups=4))


def test_global_dk_kernels_differ_per_image():
    torch.manual_seed(0)
    layer = DeformableKernel2d(2, kernel_size=3, scope_size=4, padding=1, mode="global")
    torch.nn.init.normal_(layer.kernel_offset_fc.weight, std=1.0)
    x = torch.randn(2, 2, 6, 6)
    out = layer(x)
    coords = layer.kernel_coordinates(x)
    assert coords.shape == (2, 1, 9, 2, 1, 1) and not torch.allclose(coords[0], coords[1])
    for n in range(2):  # each image: a depthwise conv with its own sampled kernel
        kernels = sample_kernels(layer.weight, coords[n:n + 1]).view(2, 1, 3, 3)
        torch.testing.assert_close(out[n:n + 1], F.conv2d(x[n:n + 1], kernels, padding=1, groups=2))


def test_local_module_matches_the_functional_form_and_starts_smoothed():
    torch.manual_seed(0)
    layer = DeformableKernel2d(4, 3, scope_size=4, padding=1, rotation_groups=2, image_offsets=True)
    x = torch.randn(2, 4, 7, 7)
    coords = layer.kernel_coordinates(x)
    assert coords.shape == (2, 2, 9, 2, 7, 7)
    assert torch.all(coords[0, 0, :, :, 0, 0] == torch.tensor([[0.5 + i, 0.5 + j] for i in range(3) for j in range(3)]))
    # zero-initialised offsets: the taps read the scope between pixels = a 2x2-averaged kernel
    averaged = F.avg_pool2d(layer.weight, 2, stride=1)  # (C, 1, 3, 3)
    torch.testing.assert_close(layer(x), F.conv2d(x, averaged, padding=1, groups=4), rtol=1e-5, atol=1e-6)
    assert len(layer.offset_parameters()) == 4


def test_bad_inputs_raise_clear_errors():
    x, kernel_offset, image_offset, scope_weight, geometry = case()
    with pytest.raises(ValueError, match="scope_weight must be"):
        deformable_kernel_conv2d(x, kernel_offset, scope_weight[:2], 3, *geometry)
    with pytest.raises(ValueError, match="at least the kernel size"):
        deformable_kernel_conv2d(x, kernel_offset, scope_weight[:, :, :2, :2], 3, *geometry)
    with pytest.raises(ValueError, match="kernel_offset must be"):
        deformable_kernel_conv2d(x, kernel_offset[:, :, :1], scope_weight, 3, *geometry)
    with pytest.raises(ValueError, match="rotation_groups"):
        deformable_kernel_conv2d(x, kernel_offset[:, :5], scope_weight, 3, *geometry)
    with pytest.raises(ValueError, match="image_offset must be"):
        deformable_kernel_conv2d(x, kernel_offset, scope_weight, 3, *geometry, image_offset=image_offset[:, :4])
    with pytest.raises(ValueError, match="mode"):
        DeformableKernel2d(4, mode="both")
    with pytest.raises(ValueError, match="scope_size"):
        DeformableKernel2d(4, 3, scope_size=2)
    with pytest.raises(ValueError, match="rotation_groups"):
        DeformableKernel2d(4, rotation_groups=3)
    with pytest.raises(ValueError, match="global DK"):
        DeformableKernel2d(4, mode="global", image_offsets=True)
    with pytest.raises(ValueError, match=r"expected \(B, 4"):
        DeformableKernel2d(4, padding=1)(torch.zeros(1, 3, 5, 5))
