"""Compute features at sampled positions only, then interpolate the rest (arXiv 2003.08866).

"Spatially Adaptive Inference with Stochastic Feature Sampling and Interpolation" (Xie et
al., ECCV 2020) saves computation where a feature map is redundant: a binary mask ``m`` says
where a convolution is evaluated; everywhere else the output is reconstructed from the sampled
neighbours by a normalised Gaussian (radial basis) interpolation:

.. math:: \\hat f = m \\odot f + (1 - m) \\odot \\frac{G_\\sigma * (m \\odot f)}{G_\\sigma * m + 10^{-5}},
          \\qquad G_\\sigma(d) = \\frac{\\sigma^2}{2\\pi} e^{-\\sigma^2 \\lVert d \\rVert^2 / 2}

on a 7 x 7 window. As in the official code (``GaussianKernel`` and
``Bottleneck.reconstruct_feature`` in zdaxie/SpatiallyAdaptiveInference-Detection):

* ``sigma`` is an *inverse* bandwidth, learnable per layer, initialised to 3; the kernel is
  **not** normalised to sum 1. At sigma = 3 the weight is ~0.016 one pixel away, ~2e-4 at
  sqrt(2) and ~2e-8 two pixels away, so a position with no sampled 8-neighbour is pulled
  towards 0 by the ``+1e-5`` in the denominator rather than averaged from farther samples.
* sampling masks get a fixed grid of always-sampled positions every 11 pixels (the grid prior).

Here the Gaussian is applied as two 1-d passes (it is separable: 2 x 7 instead of 49
multiply-adds per value), and :func:`sparse_conv2d` really evaluates a convolution at the
sampled positions only (gathered patches times the weight matrix), so counted FLOPs shrink
with the mask. The official code computes the dense convolution and then masks it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kit.ops.deform_conv import conv_output_size

__all__ = ["gaussian_kernel", "gaussian_kernel_1d", "interpolate", "interpolate_2d", "grid_prior",
           "sparse_conv2d", "DENOMINATOR_EPS"]

DENOMINATOR_EPS = 1e-5  # the official constant added to G * m


def _check_size(size: int) -> None:
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd number, got {size}")


def gaussian_kernel_1d(sigma: torch.Tensor | float, size: int = 7) -> torch.Tensor:
    """(size,) factor ``sigma / sqrt(2 pi) * exp(-sigma^2 x^2 / 2)``; its outer product is the 2-d kernel."""
    _check_size(size)
    sigma = sigma if isinstance(sigma, torch.Tensor) else torch.tensor(float(sigma), dtype=torch.float64)
    x = torch.arange(size, device=sigma.device, dtype=sigma.dtype) - (size - 1) // 2
    return sigma.abs() / math.sqrt(2 * math.pi) * torch.exp(-(sigma ** 2) * x ** 2 / 2)


def gaussian_kernel(sigma: torch.Tensor | float, size: int = 7) -> torch.Tensor:
    """(size, size) official kernel ``sigma^2 / (2 pi) * exp(-sigma^2 * d^2 / 2)`` (unnormalised)."""
    _check_size(size)
    sigma = sigma if isinstance(sigma, torch.Tensor) else torch.tensor(float(sigma), dtype=torch.float64)
    r = torch.arange(size, device=sigma.device, dtype=sigma.dtype) - (size - 1) // 2
    squared = r[:, None] ** 2 + r[None, :] ** 2
    return sigma ** 2 / (2 * math.pi) * torch.exp(-(sigma ** 2) / 2 * squared)


def _check_pair(features: torch.Tensor, mask: torch.Tensor) -> None:
    if features.dim() != 4 or mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"need features (N, C, H, W) and mask (N, 1, H, W); got {tuple(features.shape)} "
                         f"and {tuple(mask.shape)}")
    if mask.shape[0] != features.shape[0] or mask.shape[-2:] != features.shape[-2:]:
        raise ValueError(f"mask {tuple(mask.shape)} does not match features {tuple(features.shape)}")


def _separable_blur(x: torch.Tensor, kernel_1d: torch.Tensor) -> torch.Tensor:
    """Depthwise 2-d convolution with ``outer(kernel_1d, kernel_1d)``, zero padding, as two 1-d passes."""
    channels, size = x.shape[1], kernel_1d.numel()
    pad = (size - 1) // 2
    k = kernel_1d.to(x.dtype)
    x = x.contiguous(memory_format=torch.channels_last)  # depthwise convs run ~1.5x faster so on CPUs
    x = F.conv2d(x, k.view(1, 1, size, 1).expand(channels, 1, size, 1), padding=(pad, 0), groups=channels)
    return F.conv2d(x, k.view(1, 1, 1, size).expand(channels, 1, 1, size), padding=(0, pad), groups=channels)


def interpolate(features: torch.Tensor, mask: torch.Tensor, sigma: torch.Tensor | float,
                size: int = 7) -> torch.Tensor:
    """Reconstruct a dense map from the values where ``mask`` is on (separable Gaussian).

    features: (N, C, H, W), only read where mask > 0; mask: (N, 1, H, W) in [0, 1] (soft
    during training, 0/1 at test time); sigma: scalar inverse bandwidth. Returns (N, C, H, W).
    """
    _check_pair(features, mask)
    kernel = gaussian_kernel_1d(sigma, size).to(features.device, features.dtype)
    # numerator G * (m f) and denominator G * m in one depthwise pass: (N, C + 1, H, W)
    blurred = _separable_blur(torch.cat([features * mask, mask], dim=1), kernel)
    numerator, denominator = blurred[:, :-1], blurred[:, -1:] + DENOMINATOR_EPS
    return mask * features + (1 - mask) * numerator / denominator


def interpolate_2d(features: torch.Tensor, mask: torch.Tensor, sigma: torch.Tensor | float,
                   size: int = 7) -> torch.Tensor:
    """The same reconstruction with the full 2-d kernel, as the official code writes it (for tests)."""
    _check_pair(features, mask)
    kernel = gaussian_kernel(sigma, size).to(features.device, features.dtype)[None, None]  # (1, 1, k, k)
    pad, channels = (size - 1) // 2, features.shape[1]
    numerator = F.conv2d(features * mask, kernel.expand(channels, 1, size, size), padding=pad, groups=channels)
    denominator = F.conv2d(mask, kernel, padding=pad) + DENOMINATOR_EPS
    return mask * features + (1 - mask) * numerator / denominator


def grid_prior(mask: torch.Tensor, interval: int = 11) -> torch.Tensor:
    """The mask with every ``interval``-th row and column crossing forced to 1 (out of place)."""
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    mask = mask.clone()
    mask[..., ::interval, ::interval] = 1.0
    return mask


def sparse_conv2d(x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, stride: int = 1,
                  padding: int = 0, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A convolution evaluated only where ``mask`` is non-zero; zero elsewhere.

    x: (N, C_in, H, W); weight: (C_out, C_in, k, k); mask: (N, 1, H_out, W_out), the output
    grid of the convolution. The k x k input patches of the sampled outputs are gathered and
    multiplied by the weight matrix: one (n_sampled, C_in k k) x (C_in k k, C_out) product, so
    the multiply-adds scale with the number of sampled positions. Equals ``F.conv2d`` at every
    sampled position.
    """
    n, c_in, h, w = x.shape
    c_out, c_w, kh, kw = weight.shape
    if c_w != c_in or kh != kw:
        raise ValueError(f"weight {tuple(weight.shape)} must be (C_out, {c_in}, k, k)")
    h_out, w_out = conv_output_size((h, w), (kh, kw), stride, padding)
    if mask.shape != (n, 1, h_out, w_out):
        raise ValueError(f"mask must be (N, 1, H_out, W_out) = ({n}, 1, {h_out}, {w_out}), got {tuple(mask.shape)}")
    batch, rows, cols = torch.nonzero(mask[:, 0] != 0, as_tuple=True)  # (n_s,) each
    padded = F.pad(x, (padding,) * 4)
    # one (n_s, C_in) slice per kernel tap: (n_s, C_in, k k)
    taps = [padded[batch, :, rows * stride + dy, cols * stride + dx] for dy in range(kh) for dx in range(kw)]
    patches = torch.stack(taps, dim=-1).reshape(len(batch), c_in * kh * kw)
    values = patches @ weight.reshape(c_out, -1).t()  # (n_s, C_out)
    if bias is not None:
        values = values + bias
    out = x.new_zeros(n, h_out, w_out, c_out)
    out[batch, rows, cols] = values.to(out.dtype)
    return out.permute(0, 3, 1, 2)  # (N, C_out, H_out, W_out)
