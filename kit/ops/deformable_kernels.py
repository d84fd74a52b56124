"""Deformable Kernels (Gao, Zhu, Lin, Dai; ICLR 2020, arXiv 1910.02940): resample the kernel, not the image.

A rigid convolution and a deformable one (DCN) read the *input* at ``j + k`` or ``j + k + Δp_k``
with fixed weights ``W_k``. A deformable kernel (DK) keeps the rigid input grid and instead reads
its *weights* at shifted positions of a larger, continuous kernel: the "scope" ``W`` of size
``S x S`` (e.g. 4x4 for a 3x3 conv), sampled bilinearly and zero outside:

.. math::

    \\text{rigid: } O_j = \\sum_k I_{j+k} W_k \\qquad
    \\text{DCN: } O_j = \\sum_k I_{j+k+\\Delta p_k} W_k \\qquad
    \\text{DK: } O_j = \\sum_k I_{j+k}\\, W(k + \\Delta k_j)

So DK leaves the theoretical receptive field unchanged (the same input pixels contribute) and
changes *how much* each contributes: the effective receptive field. DK and DCN combine:
``O_j = sum_k I_{j+k+Δp_k} W(k + Δk_j)``.

* **Local DK**: ``Δk`` comes from a convolution over the input, per output position.
* **Global DK**: one ``Δk`` per image, from global average pooling and a linear layer; the
  sampled kernel is then applied as an ordinary (per-image) depthwise convolution.

Choices taken from the official implementation (``hangg7/deformable-kernels``: the CUDA kernel
``filter_sample_depthwise_cuda_kernel.cu`` and ``modules/deform_kernel.py``), where the paper
leaves them open:

* depthwise only (``groups == channels``), no bias, as the official operators;
* tap ``(f_h, f_w)`` of a ``K x K`` kernel reads the scope at
  ``(f_h + Δ_h + (S-K)/2,  f_w + Δ_w + (S-K)/2)`` in scope pixel-index coordinates, i.e. the
  rigid taps sit centred in the scope; with ``S > K`` and zero offsets the taps fall between
  scope pixels (a smoothed kernel, not a rigid conv);
* bilinear kernel sampling with zero outside (``planar_bilinear``), the rule of
  :func:`kit.ops.deform_conv.bilinear_sample`;
* kernel offsets ``(B, G * K * K * 2, Ho, Wo)``: for group ``g`` and tap ``t`` (row-major), the
  row offset ``Δ_h`` then the column offset ``Δ_w``; channel ``c`` uses rotation group
  ``c % G`` (interleaved; torchvision's DCN uses contiguous blocks instead);
* local DK: the offset conv is a full conv with the DK's kernel, stride, padding and dilation;
  global DK: coordinates are clamped to ``[0, S-1]`` (the official ``GlobalDeformKernel2d``);
* both offset predictors are zero-initialised (the official code only sets a ``zero_init`` flag).
* DK+DCN: the released ``DeformKernelConv2d.forward`` passes ``rotation=None``, so its kernel
  offsets are always zero; here DK+DCN learns both offsets, with two offset convs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from kit.ops.deform_conv import bilinear_sample, check_finite_offsets, conv_output_size, deformable_columns

__all__ = ["scope_coordinates", "sample_kernels", "deformable_kernel_conv2d", "DeformableKernel2d", "DK_MODES"]

DK_MODES = ("local", "global")


def scope_coordinates(kernel_offset: torch.Tensor, kernel_size, scope_size) -> torch.Tensor:
    """Where each tap reads the scope: (B, G*K*K*2, Ho, Wo) offsets -> (B, G, K*K, 2, Ho, Wo) coordinates.

    ``[..., 0, :, :]`` is the row and ``[..., 1, :, :]`` the column, in scope pixel indices:
    tap ``(i, j)`` sits at ``(i + (S_h - K_h)/2, j + (S_w - K_w)/2)`` before its offset.
    """
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(scope_size)
    b, channels, ho, wo = kernel_offset.shape
    taps = kh * kw
    if channels == 0 or channels % (2 * taps):
        raise ValueError(f"kernel offsets have {channels} channels; they need rotation_groups * {kh} * {kw} * 2")
    groups = channels // (2 * taps)
    device, dtype = kernel_offset.device, kernel_offset.dtype
    rows = torch.arange(kh, device=device, dtype=dtype).repeat_interleave(kw) + (sh - kh) / 2  # (K*K,)
    cols = torch.arange(kw, device=device, dtype=dtype).repeat(kh) + (sw - kw) / 2
    base = torch.stack([rows, cols], dim=1)[:, :, None, None]  # (K*K, 2, 1, 1)
    return kernel_offset.view(b, groups, taps, 2, ho, wo) + base


def sample_kernels(scope_weight: torch.Tensor, coordinates: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of the depthwise scope kernels: (C, 1, S, S) at (B, G, T, 2, Ho, Wo) -> (B, C, T, Ho*Wo).

    Channel ``c`` is read at the coordinates of rotation group ``c % G`` (official layout).
    """
    c, _, sh, sw = scope_weight.shape
    b, groups, taps, _, ho, wo = coordinates.shape
    if c % groups:
        raise ValueError(f"{c} channels do not split into {groups} rotation groups")
    # (B*G, C/G, S, S): the kernels of the channels of group g are channels g, g + G, g + 2G, ...
    per_group = scope_weight.view(c // groups, groups, sh, sw).transpose(0, 1)
    data = per_group.unsqueeze(0).expand(b, -1, -1, -1, -1).reshape(b * groups, c // groups, sh, sw)
    rows = coordinates[:, :, :, 0].reshape(b * groups, taps * ho * wo)
    cols = coordinates[:, :, :, 1].reshape(b * groups, taps * ho * wo)
    sampled = bilinear_sample(data, rows, cols).view(b, groups, c // groups, taps, ho * wo)
    return sampled.transpose(1, 2).reshape(b, c, taps, ho * wo)  # channel j*G + g


def deformable_kernel_conv2d(input: torch.Tensor, kernel_offset: torch.Tensor, scope_weight: torch.Tensor,
                             kernel_size, stride=1, padding=0, dilation=1, image_offset: torch.Tensor | None = None,
                             bias: torch.Tensor | None = None) -> torch.Tensor:
    """Local deformable-kernel depthwise convolution (and DK+DCN when ``image_offset`` is given).

    input (B, C, H, W); kernel_offset (B, G*K*K*2, Ho, Wo); scope_weight (C, 1, S, S) with
    ``S >= K``; image_offset (B, 2*K*K, Ho, Wo) or None (one offset group, the official layout);
    bias (C,) or None. Returns (B, C, Ho, Wo). Non-finite offsets raise FloatingPointError.
    """
    kh, kw = _pair(kernel_size)
    b, c, h, w = input.shape
    if scope_weight.dim() != 4 or scope_weight.shape[:2] != (c, 1):
        raise ValueError(f"scope_weight must be (C={c}, 1, S, S) for a depthwise DK; got {tuple(scope_weight.shape)}")
    if scope_weight.shape[2] < kh or scope_weight.shape[3] < kw:
        raise ValueError(f"the scope {tuple(scope_weight.shape[2:])} must be at least the kernel size {(kh, kw)}")
    (st, pd, dl) = _pair(stride), _pair(padding), _pair(dilation)
    ho, wo = conv_output_size((h, w), (kh, kw), st, pd, dl)
    if ho < 1 or wo < 1:
        raise ValueError(f"input {h}x{w} is too small for kernel {kh}x{kw}, padding {pd}, dilation {dl}")
    if kernel_offset.dim() != 4 or kernel_offset.shape[0] != b or tuple(kernel_offset.shape[2:]) != (ho, wo):
        raise ValueError(f"kernel_offset must be (B={b}, G*{kh}*{kw}*2, {ho}, {wo}); got {tuple(kernel_offset.shape)}")
    if image_offset is not None and tuple(image_offset.shape) != (b, 2 * kh * kw, ho, wo):
        raise ValueError(f"image_offset must be (B={b}, {2 * kh * kw}, {ho}, {wo}) (one offset group); "
                         f"got {tuple(image_offset.shape)}")
    check_finite_offsets(kernel_offset, "kernel_offset")
    if image_offset is not None:
        check_finite_offsets(image_offset, "image_offset")
    if image_offset is None:
        columns = F.unfold(input, (kh, kw), dl, pd, st)  # (B, C*K*K, Ho*Wo): the rigid taps
    else:
        columns = deformable_columns(input, image_offset, (kh, kw), st, pd, dl)  # the DCN taps
    coordinates = scope_coordinates(kernel_offset, (kh, kw), scope_weight.shape[2:])  # (B, G, K*K, 2, Ho, Wo)
    kernels = sample_kernels(scope_weight, coordinates)  # (B, C, K*K, Ho*Wo)
    out = (columns.view(b, c, kh * kw, ho * wo) * kernels).sum(2).view(b, c, ho, wo)
    return out if bias is None else out + bias.view(1, c, 1, 1)


class DeformableKernel2d(nn.Module):
    """A depthwise deformable-kernel convolution: local or global DK, optionally combined with DCN.

    channels: C (depthwise: C in, C out); scope_size: S (the official defaults are 4 for a 3x3
    local DK and 2 for a 1x1 global DK); rotation_groups: G channel groups with their own kernel
    offsets (local only); image_offsets: also learn DCN offsets on the input (DK+DCN, local only).
    """

    def __init__(self, channels: int, kernel_size=3, scope_size=4, stride=1, padding=0, dilation=1,
                 rotation_groups: int = 1, mode: str = "local", image_offsets: bool = False, bias: bool = False):
        super().__init__()
        self.kernel_size, self.scope_size = _pair(kernel_size), _pair(scope_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        if mode not in DK_MODES:
            raise ValueError(f"mode must be one of {DK_MODES}, got {mode!r}")
        if self.scope_size[0] < self.kernel_size[0] or self.scope_size[1] < self.kernel_size[1]:
            raise ValueError(f"scope_size {self.scope_size} must be >= kernel_size {self.kernel_size}")
        if rotation_groups < 1 or channels % rotation_groups:
            raise ValueError(f"rotation_groups ({rotation_groups}) must be >= 1 and divide channels ({channels})")
        if mode == "global" and (rotation_groups != 1 or image_offsets):
            raise ValueError("global DK has one set of kernel offsets per image: use rotation_groups=1 "
                             "and image_offsets=False")
        self.channels, self.mode, self.rotation_groups = channels, mode, rotation_groups
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.weight = nn.Parameter(torch.empty(channels, 1, *self.scope_size))  # the scope kernels
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None
        if mode == "local":
            self.kernel_offset_conv = nn.Conv2d(channels, rotation_groups * taps * 2, self.kernel_size,
                                                self.stride, self.padding, self.dilation)
        else:
            self.kernel_offset_fc = nn.Linear(channels, taps * 2)
        self.image_offset_conv = (nn.Conv2d(channels, taps * 2, self.kernel_size, self.stride, self.padding,
                                            self.dilation) if image_offsets else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.kernel_size[0] * self.kernel_size[1])  # official: U(-1/sqrt(K*K), ...)
        nn.init.uniform_(self.weight, -bound, bound)
        for layer in self.offset_layers():
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def offset_layers(self) -> list[nn.Module]:
        layers = [self.kernel_offset_conv if self.mode == "local" else self.kernel_offset_fc]
        return layers + ([self.image_offset_conv] if self.image_offset_conv is not None else [])

    def offset_parameters(self) -> list[nn.Parameter]:
        """Parameters of the offset predictors (trained with a reduced learning rate, like DCN's)."""
        return [p for layer in self.offset_layers() for p in layer.parameters()]

    def kernel_coordinates(self, x: torch.Tensor) -> torch.Tensor:
        """Where each tap reads the scope: (B, G, K*K, 2, Ho, Wo) (global DK: Ho = Wo = 1)."""
        if self.mode == "local":
            return scope_coordinates(self.kernel_offset_conv(x), self.kernel_size, self.scope_size)
        pooled = x.mean(dim=(2, 3))  # (B, C)
        offset = self.kernel_offset_fc(pooled)[:, :, None, None]  # (B, K*K*2, 1, 1)
        check_finite_offsets(offset, "kernel offsets")  # clamping below would hide a NaN
        coordinates = scope_coordinates(offset, self.kernel_size, self.scope_size)
        high = coordinates.new_tensor([self.scope_size[0] - 1, self.scope_size[1] - 1]).view(1, 1, 1, 2, 1, 1)
        return torch.minimum(coordinates.clamp(min=0), high)  # official global DK clamps to the scope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected (B, {self.channels}, H, W), got {tuple(x.shape)}")
        if self.mode == "local":
            image_offset = self.image_offset_conv(x) if self.image_offset_conv is not None else None
            return deformable_kernel_conv2d(x, self.kernel_offset_conv(x), self.weight, self.kernel_size,
                                            self.stride, self.padding, self.dilation, image_offset, self.bias)
        b, c, h, w = x.shape
        kh, kw = self.kernel_size
        kernels = sample_kernels(self.weight, self.kernel_coordinates(x))  # (B, C, K*K, 1)
        out = F.conv2d(x.reshape(1, b * c, h, w), kernels.reshape(b * c, 1, kh, kw), None, self.stride,
                       self.padding, self.dilation, groups=b * c)  # one depthwise kernel per image
        out = out.view(b, c, *out.shape[2:])
        return out if self.bias is None else out + self.bias.view(1, c, 1, 1)

    def extra_repr(self) -> str:
        extra = ", +DCN" if self.image_offset_conv is not None else ""
        return (f"{self.channels}, kernel_size={self.kernel_size}, scope={self.scope_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, mode={self.mode}, "
                f"rotation_groups={self.rotation_groups}{extra}")
