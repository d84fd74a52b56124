"""Deformable convolution (kit.ops.deform_conv) against torchvision, a slow loop and plain convs."""
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d as tv_deform_conv2d

from kit.ops.deform_conv import (DeformConv2d, bilinear_sample, check_deform_inputs, conv_output_size,
                                 deform_conv2d, deform_conv2d_reference, deformable_columns, sampling_positions)

DOUBLE = torch.float64


def bilinear_scalar(plane, y, x):
    """The textbook rule: four corners, each counted only if it lies inside the plane."""
    h, w = plane.shape
    y0, x0 = math.floor(y), math.floor(x)
    value = 0.0
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                value += wy * wx * float(plane[yy, xx])
    return value


def loop_deform_conv(x, weight, offset, mask, bias, stride, padding, dilation):
    """y(p) = sum_k w_k x(p + p_k + dp_k) m_k, one output value at a time (DCNv2 eq. 3)."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    b, c_in, h, w = x.shape
    c_out, c_per_group, kh, kw = weight.shape
    ho, wo = offset.shape[2:]
    offset_groups = offset.shape[1] // (2 * kh * kw)
    groups = c_in // c_per_group
    out = torch.zeros(b, c_out, ho, wo, dtype=x.dtype)
    for n in range(b):
        for o in range(c_out):
            g = o // (c_out // groups)
            for oy in range(ho):
                for ox in range(wo):
                    total = float(bias[o]) if bias is not None else 0.0
                    for i in range(kh):
                        for j in range(kw):
                            for cc in range(c_per_group):
                                c = g * c_per_group + cc
                                og = c // (c_in // offset_groups)
                                tap = og * kh * kw + i * kw + j
                                y = sh * oy - ph + dh * i + float(offset[n, 2 * tap, oy, ox])
                                xx = sw * ox - pw + dw * j + float(offset[n, 2 * tap + 1, oy, ox])
                                m = 1.0 if mask is None else float(mask[n, tap, oy, ox])
                                total += float(weight[o, cc, i, j]) * m * bilinear_scalar(x[n, c], y, xx)
                    out[n, o, oy, ox] = total
    return out


def make_case(seed=0, batch=2, c_in=6, c_out=2, groups=2, offset_groups=3, kernel=(3, 2), in_hw=(5, 4),
              stride=(2, 1), padding=(1, 0), dilation=(2, 1), dtype=DOUBLE, offset_scale=1.0):
    """torchvision's own awkward case by default (test_ops.py TestDeformConv.get_fn_args)."""
    g = torch.Generator().manual_seed(seed)
    kh, kw = kernel
    ho = (in_hw[0] + 2 * padding[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    wo = (in_hw[1] + 2 * padding[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    x = torch.rand(batch, c_in, *in_hw, generator=g, dtype=dtype)
    offset = offset_scale * torch.randn(batch, offset_groups * 2 * kh * kw, ho, wo, generator=g, dtype=dtype)
    mask = torch.randn(batch, offset_groups * kh * kw, ho, wo, generator=g, dtype=dtype)
    weight = torch.randn(c_out, c_in // groups, kh, kw, generator=g, dtype=dtype)
    bias = torch.randn(c_out, generator=g, dtype=dtype)
    return x, offset, mask, weight, bias, stride, padding, dilation


CASES = [
    dict(),  # torchvision's: groups 2, offset groups 3, stride/padding/dilation differ per axis
    dict(c_in=4, c_out=6, groups=1, offset_groups=2, kernel=(3, 3), in_hw=(6, 7), stride=(1, 2), padding=(2, 1),
         dilation=(1, 2), offset_scale=2.5),
    dict(c_in=4, c_out=4, groups=4, offset_groups=4, kernel=(2, 3), in_hw=(4, 6), stride=(1, 1), padding=(0, 1),
         dilation=(1, 1)),
    dict(c_in=3, c_out=2, groups=1, offset_groups=1, kernel=(1, 1), in_hw=(1, 5), stride=(1, 1), padding=(0, 0),
         dilation=(1, 1)),  # a 1-pixel-high input
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("with_mask", [True, False])
def test_reference_matches_torchvision_and_the_loop(case, with_mask):
    x, offset, mask, weight, bias, stride, padding, dilation = make_case(**case)
    mask = mask if with_mask else None
    ours = deform_conv2d_reference(x, offset, weight, bias, stride, padding, dilation, mask)
    theirs = tv_deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)
    loop = loop_deform_conv(x, weight, offset, mask, bias, stride, padding, dilation)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ours, loop, rtol=1e-9, atol=1e-9)


def test_reference_gradients_match_torchvision_and_gradcheck():
    x, offset, mask, weight, bias, stride, padding, dilation = make_case(batch=1)
    # keep sampling positions away from integer knots, where bilinear is not differentiable
    offset = (offset.floor() + 0.3 + 0.4 * torch.rand_like(offset))
    args = [t.clone().requires_grad_() for t in (x, offset, mask, weight, bias)]
    fn = lambda x_, o_, m_, w_, b_: deform_conv2d_reference(x_, o_, w_, b_, stride, padding, dilation, m_)
    assert torch.autograd.gradcheck(fn, args, fast_mode=True)
    ours = torch.autograd.grad(fn(*args).square().sum(), args)
    tv = lambda x_, o_, m_, w_, b_: tv_deform_conv2d(x_, o_, w_, b_, stride, padding, dilation, m_)
    theirs = torch.autograd.grad(tv(*args).square().sum(), args)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("case", CASES[:3])
def test_zero_offsets_and_unit_mask_equal_conv2d(case):
    x, offset, mask, weight, bias, stride, padding, dilation = make_case(**case)
    zero, ones = torch.zeros_like(offset), torch.ones_like(mask)
    groups = x.shape[1] // weight.shape[1]
    expected = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    for backend in ("torch", "torchvision"):
        torch.testing.assert_close(deform_conv2d(x, zero, weight, bias, stride, padding, dilation, ones,
                                                 backend=backend), expected)
        torch.testing.assert_close(deform_conv2d(x, zero, weight, bias, stride, padding, dilation,
                                                 backend=backend), expected)


def test_zero_offset_columns_are_unfold():
    x, offset, _, weight, _, stride, padding, dilation = make_case(**CASES[1])
    columns = deformable_columns(x, torch.zeros_like(offset), weight.shape[2:], stride, padding, dilation)
    torch.testing.assert_close(columns, F.unfold(x, weight.shape[2:], dilation, padding, stride))


def test_mask_is_linear_and_half_mask_halves_the_output():
    x, offset, mask, weight, _, stride, padding, dilation = make_case()
    out = lambda m: deform_conv2d_reference(x, offset, weight, None, stride, padding, dilation, m)
    torch.testing.assert_close(out(torch.full_like(mask, 0.5)), 0.5 * out(torch.ones_like(mask)))
    other = torch.rand_like(mask)
    torch.testing.assert_close(out(2 * mask - 3 * other), 2 * out(mask) - 3 * out(other))


def test_constant_integer_offset_is_a_shifted_conv():
    g = torch.Generator().manual_seed(1)
    x, weight = torch.randn(2, 3, 9, 8, generator=g, dtype=DOUBLE), torch.randn(4, 3, 3, 3, generator=g, dtype=DOUBLE)
    dy, dx = 2, -1
    offset = torch.zeros(2, 18, 9, 8, dtype=DOUBLE)
    offset[:, 0::2], offset[:, 1::2] = dy, dx
    # y(p) = sum_k w_k x(p + k - 1 + d): a valid conv over a wide zero border, cropped at the shift
    border = 4
    full = F.conv2d(F.pad(x, (border,) * 4), weight)  # output o reads x[o + k - border]
    top, left = border - 1 + dy, border - 1 + dx
    expected = full[:, :, top:top + 9, left:left + 8]
    torch.testing.assert_close(deform_conv2d_reference(x, offset, weight, padding=1), expected)


def test_bilinear_sample_follows_the_zero_outside_rule():
    g = torch.Generator().manual_seed(2)
    for h, w in ((5, 4), (1, 3), (3, 1), (1, 1)):
        data = torch.randn(2, 3, h, w, generator=g, dtype=DOUBLE)
        rows = torch.rand(2, 40, generator=g, dtype=DOUBLE) * (h + 3) - 2  # some well outside
        cols = torch.rand(2, 40, generator=g, dtype=DOUBLE) * (w + 3) - 2
        got = bilinear_sample(data, rows, cols)
        for n in range(2):
            for c in range(3):
                expected = [bilinear_scalar(data[n, c], float(r), float(q)) for r, q in zip(rows[n], cols[n])]
                torch.testing.assert_close(got[n, c], torch.tensor(expected, dtype=DOUBLE))


def test_sampling_positions_are_the_rigid_grid_at_zero_offset():
    offset = torch.zeros(1, 2 * 9, 3, 4)
    pos = sampling_positions(offset, 3, stride=(2, 1), padding=(1, 0), dilation=(1, 2))  # (1, 1, 9, 2, 3, 4)
    assert pos.shape == (1, 1, 9, 2, 3, 4)
    # tap (i, j) = (2, 1) of output (1, 3): row 2*1 - 1 + 2 = 3, col 3 - 0 + 2*1 = 5
    assert pos[0, 0, 2 * 3 + 1, :, 1, 3].tolist() == [3.0, 5.0]


@pytest.mark.parametrize("modulated,activation,factor", [(False, "sigmoid", 1.0), (True, "sigmoid", 0.5),
                                                         (True, "2sigmoid", 1.0)])
def test_module_starts_as_a_rigid_conv(modulated, activation, factor):
    torch.manual_seed(0)
    layer = DeformConv2d(4, 6, 3, stride=(1, 2), padding=(1, 2), dilation=(1, 2), groups=2, offset_groups=2,
                         modulated=modulated, mask_activation=activation)
    x = torch.randn(2, 4, 7, 9)
    expected = factor * F.conv2d(x, layer.weight, None, (1, 2), (1, 2), (1, 2), 2) + layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    offset, mask = layer.offsets_and_mask(x)
    assert offset.shape == (2, 2 * 2 * 9, 7, 5) and not offset.any()
    assert (mask is None) == (not modulated)


def test_module_backends_agree_with_learnt_offsets():
    torch.manual_seed(0)
    layer = DeformConv2d(6, 4, 3, padding=1, offset_groups=3, modulated=True)
    torch.nn.init.normal_(layer.offset_conv.weight, std=0.3)
    x = torch.randn(2, 6, 8, 8)
    a = layer(x)
    layer.backend = "torchvision"
    b = layer(x)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    offset, mask = layer.offsets_and_mask(x)
    assert offset.abs().sum() > 0 and 0 < float(mask.detach().min()) and float(mask.detach().max()) < 1


def test_offset_parameters_are_the_offset_branch():
    layer = DeformConv2d(4, 4, 3, padding=1)
    assert {id(p) for p in layer.offset_parameters()} == {id(layer.offset_conv.weight), id(layer.offset_conv.bias)}


def test_bad_inputs_raise_clear_errors():
    x, offset, mask, weight, bias, stride, padding, dilation = make_case()
    with pytest.raises(ValueError, match="offset has 5 channels"):
        deform_conv2d(x, offset[:, :5], weight, bias, stride, padding, dilation)
    with pytest.raises(ValueError, match="mask must be"):
        deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask[:, :2])
    with pytest.raises(ValueError, match="offset must be"):
        deform_conv2d(x, offset[:, :, :1], weight, bias, stride, padding, dilation)
    with pytest.raises(ValueError, match="offset groups do not divide"):
        deform_conv2d(x, torch.zeros(2, 4 * 12, *offset.shape[2:], dtype=DOUBLE), weight, bias, stride, padding,
                      dilation)
    with pytest.raises(ValueError, match="does not divide"):
        deform_conv2d(x, offset, torch.zeros(2, 4, 3, 2, dtype=DOUBLE), None, stride, padding, dilation)
    with pytest.raises(ValueError, match="too small"):
        check_deform_inputs(torch.zeros(1, 1, 2, 2), torch.zeros(1, 18, 1, 1), torch.zeros(1, 1, 3, 3))
    with pytest.raises(ValueError, match="backend"):
        deform_conv2d(x, offset, weight, backend="cuda")
    with pytest.raises(ValueError, match="mask_activation"):
        DeformConv2d(4, 4, mask_activation="tanh")
    with pytest.raises(ValueError, match="offset_groups"):
        DeformConv2d(4, 4, offset_groups=3)
    with pytest.raises(ValueError, match="divisible by groups"):
        DeformConv2d(4, 6, groups=4)


@pytest.mark.parametrize("size,kernel,stride,padding,dilation", [
    ((7, 9), 3, 1, 1, 1), ((7, 9), 3, 2, 1, 1), ((8, 5), (3, 1), (2, 1), (0, 1), 1), ((10, 11), 3, 3, 2, 2),
    ((5, 6), 1, 2, 0, 1), ((9, 9), (2, 4), 2, (1, 0), (3, 1))])
def test_conv_output_size_is_torch_convs(size, kernel, stride, padding, dilation):
    conv = torch.nn.Conv2d(1, 1, kernel, stride, padding, dilation)
    assert conv_output_size(size, kernel, stride, padding, dilation) == tuple(conv(torch.zeros(1, 1, *size)).shape[-2:])
