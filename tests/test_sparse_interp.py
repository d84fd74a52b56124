import math

import pytest
import torch
import torch.nn.functional as F

from kit.ops.sparse_interp import (gaussian_kernel, gaussian_kernel_1d, grid_prior, interpolate,
                                   interpolate_2d, sparse_conv2d)


def test_kernel_is_the_official_unnormalised_form_and_separable():
    k = gaussian_kernel(3.0, 7)
    assert k.shape == (7, 7)
    assert abs(k[3, 3].item() - 9 / (2 * math.pi)) < 1e-6  # sigma^2 / (2 pi) at the centre
    assert abs(k[3, 4].item() / k[3, 3].item() - math.exp(-4.5)) < 1e-6  # one pixel away
    assert torch.allclose(torch.outer(gaussian_kernel_1d(3.0), gaussian_kernel_1d(3.0)), k, atol=1e-7)
    assert k.sum() < 2  # not normalised to 1


def test_separable_interpolation_equals_the_2d_kernel():
    features = torch.randn(2, 5, 12, 9, dtype=torch.float64)
    mask = (torch.rand(2, 1, 12, 9) < 0.4).double()
    for sigma in (0.7, 3.0):
        assert torch.allclose(interpolate(features, mask, sigma), interpolate_2d(features, mask, sigma), atol=1e-10)


def test_full_mask_is_the_identity():
    features = torch.randn(1, 3, 8, 8)
    assert torch.equal(interpolate(features, torch.ones(1, 1, 8, 8), 3.0), features)


def test_hard_mask_keeps_samples_and_interpolates_between_them():
    features = torch.rand(1, 2, 10, 10) + 1.0  # values in [1, 2]
    mask = torch.zeros(1, 1, 10, 10)
    mask[..., ::2, ::2] = 1  # every unsampled position has a sampled 8-neighbour
    out = interpolate(features, mask, 3.0)
    sampled = mask.bool().expand_as(features)
    assert torch.equal(out[sampled], features[sampled])
    # sampled values weighted by G / (G*m + 1e-5), summing to just under 1 (0.98 with diagonal
    # neighbours only, whose weight is e^-9 of the centre's at sigma 3)
    assert (out[~sampled] <= 2.0).all() and (out[~sampled] > 0.98 * 1.0).all()
    # a constant map comes back nearly constant: within 0.1% next to a sampled 4-neighbour,
    # within 6% where only diagonal (or corner) neighbours are sampled
    constant = interpolate(torch.full((1, 1, 10, 10), 4.0), mask, 3.0)
    assert torch.allclose(constant[..., ::2, 1::2], torch.tensor(4.0), rtol=1e-3)
    assert torch.allclose(constant, torch.full_like(constant, 4.0), rtol=0.06)


def test_far_from_every_sample_the_reconstruction_falls_to_zero():
    """The official epsilon dominates where G * m is tiny (no sampled neighbour within ~2 px at sigma 3)."""
    features = torch.full((1, 1, 15, 15), 5.0)
    mask = torch.zeros(1, 1, 15, 15)
    mask[..., 0, 0] = 1
    out = interpolate(features, mask, 3.0)
    assert out[0, 0, 0, 1] > 4.9 and out[0, 0, 5, 5] < 1e-3


def test_gradients_reach_sigma_and_the_mask():
    features = torch.randn(1, 2, 6, 6)
    mask = torch.rand(1, 1, 6, 6).requires_grad_()
    sigma = torch.tensor(3.0, requires_grad=True)
    interpolate(features, mask, sigma).square().sum().backward()
    assert sigma.grad is not None and torch.isfinite(sigma.grad) and mask.grad.abs().sum() > 0


def test_grid_prior():
    mask = grid_prior(torch.zeros(1, 1, 23, 23), 11)
    assert mask.sum() == 9 and mask[0, 0, 11, 22] == 1 and mask[0, 0, 1, 0] == 0


@pytest.mark.parametrize("kernel,stride,padding", [(1, 1, 0), (3, 1, 1), (3, 2, 1)])
def test_sparse_conv_equals_conv_at_sampled_positions(kernel, stride, padding):
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    weight = torch.randn(6, 4, kernel, kernel, dtype=torch.float64)
    bias = torch.randn(6, dtype=torch.float64)
    dense = F.conv2d(x, weight, bias, stride=stride, padding=padding)
    mask = (torch.rand(2, 1, *dense.shape[-2:]) < 0.3).double()
    sparse = sparse_conv2d(x, weight, mask, stride, padding, bias)
    assert torch.allclose(sparse, dense * mask, atol=1e-12)


def test_sparse_conv_counts_fewer_flops():
    from torch.utils.flop_counter import FlopCounterMode

    x, weight = torch.randn(1, 8, 16, 16), torch.randn(8, 8, 3, 3)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :4, :] = 1  # a quarter of the positions
    with FlopCounterMode(display=False) as counter:
        sparse_conv2d(x, weight, mask, 1, 1)
    assert counter.get_total_flops() == 2 * 64 * 8 * 9 * 8  # 64 positions x C_in k k x C_out multiply-adds


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="odd"):
        gaussian_kernel(3.0, 6)
    with pytest.raises(ValueError, match="does not match"):
        interpolate(torch.randn(1, 2, 8, 8), torch.ones(1, 1, 4, 4), 3.0)
    with pytest.raises(ValueError, match=r"mask must be \(N, 1, H_out, W_out\)"):
        sparse_conv2d(torch.randn(1, 2, 8, 8), torch.randn(3, 2, 3, 3), torch.ones(1, 1, 8, 8), stride=2, padding=1)
    with pytest.raises(ValueError, match="interval"):
        grid_prior(torch.zeros(1, 1, 4, 4), 0)
