"""Deformable convolution v1 and v2 (Dai et al., arXiv 1703.06211; Zhu et al., arXiv 1811.11168).

A rigid 3x3 convolution reads its input on a fixed grid around each output pixel ``p``. A
deformable one adds a learned offset to every kernel tap, and v2 also a learned modulation
scalar per tap:

.. math::

    y(p) = \\sum_{k=1}^{K} w_k \\; x\\big(p + p_k + \\Delta p_k(p)\\big) \\; \\Delta m_k(p),
    \\qquad \\Delta m_k \\in [0, 1]

``x(\\cdot)`` at a fractional position is bilinear interpolation, zero outside the image. The
offsets and masks come from an ordinary convolution on the same input ("offset conv"), which is
zero-initialised, so training starts from a rigid grid (v1: exactly the rigid conv; v2 with the
paper's sigmoid mask: the rigid conv times 0.5, or exactly the rigid conv with the official
MXNet example's ``2 * sigmoid``).

Conventions, as in ``torchvision.ops.deform_conv2d`` (the op this module runs on a GPU):

* ``offset`` is ``(B, 2 * G * kh * kw, Ho, Wo)``; channel ``2 * (g * kh * kw + i * kw + j)`` is
  the *row* offset ``dy`` of tap ``(i, j)`` in offset group ``g`` and the next channel is ``dx``
  (interleaved ``(dy, dx)`` pairs, y first).
* ``mask`` is ``(B, G * kh * kw, Ho, Wo)``, applied as given (the op has no sigmoid inside).
* input channel ``c`` uses offset group ``c // (C_in / G)`` (contiguous blocks of channels);
  weight groups work as in ``F.conv2d``.
* tap ``(i, j)`` of output ``(oy, ox)`` reads ``(s_h oy - p_h + d_h i + dy, s_w ox - p_w + d_w j + dx)``.

:func:`deform_conv2d_reference` is the same operation in plain PyTorch (bilinear sampling of
every tap, then the ``unfold`` layout and a grouped matrix product). The tests check it against
torchvision and against a slow loop. On the CPU it is also 3-7x faster than torchvision's CPU
kernel (measured in ``bench/bench_deform_conv.py``), so :class:`DeformConv2d` runs it there.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d as tv_deform_conv2d

__all__ = ["bilinear_sample", "conv_output_size", "sampling_positions", "deformable_columns", "deform_conv2d",
           "deform_conv2d_reference", "check_deform_inputs", "check_finite_offsets", "DeformConv2d",
           "MASK_ACTIVATIONS"]

MASK_ACTIVATIONS = ("sigmoid", "2sigmoid")


# --------------------------------------------------------------------------- sampling


def bilinear_sample(data: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Bilinear values of ``data`` (N, C, H, W) at fractional pixel positions -> (N, C, P).

    rows, cols: (N, P) in pixel-index coordinates (pixel ``(r, c)`` sits at ``(r, c)``). Each of
    the four neighbouring pixels that lies outside the image counts as zero, so a position one
    pixel or more outside reads exactly 0: torchvision's rule and the official CUDA kernels'.
    That is ``grid_sample(..., align_corners=True, padding_mode="zeros")`` once pixel indices are
    normalised by ``size - 1``; a 1-pixel-wide axis is padded with one zero pixel first so the
    normalisation is defined (the zero pixel is what the rule reads there anyway).
    """
    n, c, h, w = data.shape
    if rows.shape != cols.shape or rows.dim() != 2 or rows.shape[0] != n:
        raise ValueError(f"rows and cols must both be (N={n}, P); got {tuple(rows.shape)} and {tuple(cols.shape)}")
    if h == 1 or w == 1:
        data = F.pad(data, (0, int(w == 1), 0, int(h == 1)))  # one zero pixel after the last
        h, w = data.shape[-2:]
    grid = torch.stack([cols * (2 / (w - 1)) - 1, rows * (2 / (h - 1)) - 1], dim=-1)  # (N, P, 2) as (x, y)
    sampled = F.grid_sample(data, grid[:, None].to(data.dtype), mode="bilinear", padding_mode="zeros",
                            align_corners=True)  # (N, C, 1, P)
    return sampled[:, :, 0]


def conv_output_size(in_size, kernel_size, stride=1, padding=0, dilation=1) -> tuple[int, int]:
    """``(Ho, Wo)`` of a 2-d convolution on an ``(H, W)`` input (the formula of :class:`torch.nn.Conv2d`):
    ``(H + 2 p - d (k - 1) - 1) // s + 1`` per axis; every argument an int or a pair."""
    return tuple((i + 2 * p - (d * (k - 1) + 1)) // s + 1
                 for i, k, s, p, d in zip(_pair(in_size), _pair(kernel_size), _pair(stride), _pair(padding),
                                          _pair(dilation)))


def sampling_positions(offset: torch.Tensor, kernel_size, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """Absolute input positions read by every tap: offset (B, 2*G*kh*kw, Ho, Wo) -> (B, G, kh*kw, 2, Ho, Wo).

    ``[..., 0, :, :]`` is the row (y) and ``[..., 1, :, :]`` the column (x), in pixel-index
    coordinates of the layer's input; zero offsets give the rigid grid.
    """
    kh, kw = _pair(kernel_size)
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    b, channels, ho, wo = offset.shape
    taps = kh * kw
    if channels % (2 * taps) != 0:
        raise ValueError(f"offset has {channels} channels; it needs 2 * offset_groups * {kh} * {kw}")
    groups = channels // (2 * taps)
    device, dtype = offset.device, offset.dtype
    tap_i = torch.arange(kh, device=device, dtype=dtype).repeat_interleave(kw)  # (K,) row of each tap
    tap_j = torch.arange(kw, device=device, dtype=dtype).repeat(kh)  # (K,) column of each tap
    base_rows = sh * torch.arange(ho, device=device, dtype=dtype)[None, :, None] - ph + dh * tap_i[:, None, None]
    base_cols = sw * torch.arange(wo, device=device, dtype=dtype)[None, None, :] - pw + dw * tap_j[:, None, None]
    base = torch.stack([base_rows.expand(taps, ho, wo), base_cols.expand(taps, ho, wo)], dim=1)  # (K, 2, Ho, Wo)
    return offset.view(b, groups, taps, 2, ho, wo) + base


def deformable_columns(input: torch.Tensor, offset: torch.Tensor, kernel_size, stride=1, padding=0,
                       dilation=1, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Deformable im2col: the sampled (and modulated) taps in ``F.unfold``'s layout.

    input (B, C, H, W), offset (B, 2*G*K, Ho, Wo), mask (B, G*K, Ho, Wo) or None ->
    (B, C * K, Ho * Wo) where row ``c * K + k`` is channel ``c`` read at tap ``k``. With zero
    offsets and no mask this equals ``F.unfold(input, kernel_size, dilation, padding, stride)``.
    """
    b, c, h, w = input.shape
    positions = sampling_positions(offset, kernel_size, stride, padding, dilation)  # (B, G, K, 2, Ho, Wo)
    _, groups, taps, _, ho, wo = positions.shape
    if c % groups != 0:
        raise ValueError(f"{c} input channels do not split into {groups} offset groups")
    rows = positions[:, :, :, 0].reshape(b * groups, taps * ho * wo)
    cols = positions[:, :, :, 1].reshape(b * groups, taps * ho * wo)
    sampled = bilinear_sample(input.reshape(b * groups, c // groups, h, w), rows, cols)  # (B*G, C/G, K*Ho*Wo)
    sampled = sampled.view(b, groups, c // groups, taps, ho * wo)
    if mask is not None:
        sampled = sampled * mask.reshape(b, groups, 1, taps, ho * wo)
    return sampled.reshape(b, c * taps, ho * wo)


# --------------------------------------------------------------------------- checks and ops


def check_deform_inputs(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None) -> dict:
    """Validate the arguments of a deformable convolution; return its geometry.

    Raises ValueError naming what is wrong and what is allowed (torchvision's own messages are
    terser, and some wrong shapes it does not reject at all on every device).
    """
    if input.dim() != 4 or offset.dim() != 4 or weight.dim() != 4:
        raise ValueError(f"input, offset and weight must be 4-D; got {input.dim()}, {offset.dim()}, {weight.dim()} dims")
    b, c_in, h, w = input.shape
    c_out, c_per_group, kh, kw = weight.shape
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"need stride >= 1, dilation >= 1, padding >= 0; got {stride}, {dilation}, {padding}")
    if c_per_group < 1 or c_in % c_per_group != 0:
        raise ValueError(f"weight has {c_per_group} input channels per group, which does not divide the "
                         f"input's {c_in} channels")
    groups = c_in // c_per_group
    if c_out % groups != 0:
        raise ValueError(f"{c_out} output channels do not split into {groups} weight groups")
    taps = kh * kw
    if offset.shape[1] == 0 or offset.shape[1] % (2 * taps) != 0:
        raise ValueError(f"offset has {offset.shape[1]} channels; it must be 2 * offset_groups * kh * kw "
                         f"= a positive multiple of {2 * taps} for a {kh}x{kw} kernel")
    offset_groups = offset.shape[1] // (2 * taps)
    if c_in % offset_groups != 0:
        raise ValueError(f"{offset_groups} offset groups do not divide the input's {c_in} channels")
    out_hw = conv_output_size((h, w), (kh, kw), stride, padding, dilation)
    if min(out_hw) < 1:
        raise ValueError(f"input {h}x{w} is too small for kernel {kh}x{kw} with padding {padding}, "
                         f"dilation {dilation}: the output would be {out_hw[0]}x{out_hw[1]}")
    if offset.shape[0] != b or tuple(offset.shape[2:]) != out_hw:
        raise ValueError(f"offset must be (B={b}, {offset.shape[1]}, Ho={out_hw[0]}, Wo={out_hw[1]}); "
                         f"got {tuple(offset.shape)}")
    if mask is not None and tuple(mask.shape) != (b, offset_groups * taps, *out_hw):
        raise ValueError(f"mask must be (B={b}, offset_groups * kh * kw = {offset_groups * taps}, "
                         f"{out_hw[0]}, {out_hw[1]}); got {tuple(mask.shape)}")
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise ValueError(f"bias must be ({c_out},); got {tuple(bias.shape)}")
    return dict(groups=groups, offset_groups=offset_groups, kernel_size=(kh, kw), out_size=out_hw,
                stride=stride, padding=padding, dilation=dilation)


def check_finite_offsets(offset: torch.Tensor, name: str = "offset") -> None:
    """Raise FloatingPointError when ``offset`` holds NaN or inf; one reduction.

    torchvision's CPU ``deform_conv2d`` kernel segfaults on NaN offsets, which kills a Jupyter
    kernel instead of stopping a diverging run with an error. Every deformable path of the kit
    calls this before its kernel, and raises what ``kit.train`` raises for a non-finite loss.
    """
    if not bool(torch.isfinite(offset).all()):
        count = int((~torch.isfinite(offset)).sum())
        raise FloatingPointError(f"{name} has {count} non-finite values (NaN or inf) of {offset.numel()}; "
                                 "offsets must be finite: the run has diverged (too high a learning rate, or a "
                                 "NaN weight in the offset branch)")


def deform_conv2d_reference(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """Deformable convolution in plain PyTorch: deformable im2col, then a grouped matrix product.

    Same arguments, layouts and result as ``torchvision.ops.deform_conv2d``; differentiable by
    autograd in every argument.
    """
    geometry = check_deform_inputs(input, offset, weight, bias, stride, padding, dilation, mask)
    b = input.shape[0]
    c_out, c_per_group, kh, kw = weight.shape
    groups, (ho, wo) = geometry["groups"], geometry["out_size"]
    columns = deformable_columns(input, offset, (kh, kw), geometry["stride"], geometry["padding"],
                                 geometry["dilation"], mask)  # (B, C_in*K, L)
    columns = columns.view(b, groups, c_per_group * kh * kw, ho * wo)  # (B, groups, C/g*K, L)
    kernels = weight.reshape(groups, c_out // groups, c_per_group * kh * kw)  # (groups, O/g, C/g*K)
    out = torch.einsum("gok,bgkl->bgol", kernels, columns).reshape(b, c_out, ho, wo)
    if bias is not None:
        out = out + bias.view(1, c_out, 1, 1)
    return out


def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None,
                  backend: str = "auto"):
    """Validated deformable convolution (v2 when ``mask`` is given, v1 when it is None).

    backend: ``"torchvision"`` (its C++/CUDA kernel), ``"torch"`` (:func:`deform_conv2d_reference`)
    or ``"auto"``: torchvision on CUDA, the plain-PyTorch form on the CPU, where it is several
    times faster than torchvision's CPU kernel for the small maps used here (see the bench).
    Non-finite offsets raise FloatingPointError first (:func:`check_finite_offsets`).
    """
    if backend not in ("auto", "torchvision", "torch"):
        raise ValueError(f"backend must be 'auto', 'torchvision' or 'torch', got {backend!r}")
    check_finite_offsets(offset)
    if backend == "torch" or (backend == "auto" and input.device.type == "cpu"):
        return deform_conv2d_reference(input, offset, weight, bias, stride, padding, dilation, mask)
    check_deform_inputs(input, offset, weight, bias, stride, padding, dilation, mask)
    return tv_deform_conv2d(input, offset, weight, bias, _pair(stride), _pair(padding), _pair(dilation), mask)


# --------------------------------------------------------------------------- module


class DeformConv2d(nn.Module):
    """A deformable convolution with its own offset (and mask) branch: DCNv1 or DCNv2.

    ``offset_conv`` is an ordinary convolution with the main conv's kernel, stride, padding and
    dilation; it predicts ``2 * G * K`` offsets (``(dy, dx)`` per tap and offset group) and, for
    v2 (``modulated=True``), ``G * K`` mask logits after them. It is zero-initialised as in the
    official DCNv2 code, so at step 0 every tap samples the rigid grid and every mask is
    ``act(0)``: 0.5 for ``"sigmoid"`` (the paper, mmcv) or 1 for ``"2sigmoid"`` (the official
    MXNet example). The paper trains the offset branch with 0.1x the learning rate; see
    :meth:`offset_parameters`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=0, dilation=1,
                 groups: int = 1, offset_groups: int = 1, bias: bool = True, modulated: bool = True,
                 mask_activation: str = "sigmoid", backend: str = "auto"):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be "
                             f"divisible by groups ({groups})")
        if offset_groups < 1 or in_channels % offset_groups:
            raise ValueError(f"offset_groups ({offset_groups}) must be >= 1 and divide in_channels ({in_channels})")
        if mask_activation not in MASK_ACTIVATIONS:
            raise ValueError(f"mask_activation must be one of {MASK_ACTIVATIONS}, got {mask_activation!r}")
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.groups, self.offset_groups = groups, offset_groups
        self.modulated, self.mask_activation, self.backend = modulated, mask_activation, backend
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        branch_channels = offset_groups * taps * (3 if modulated else 2)
        self.offset_conv = nn.Conv2d(in_channels, branch_channels, self.kernel_size, self.stride,
                                     self.padding, self.dilation, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # as nn.Conv2d
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.zeros_(self.offset_conv.weight)  # start as a rigid grid (official DCNv2)
        nn.init.zeros_(self.offset_conv.bias)

    def offset_parameters(self) -> list[nn.Parameter]:
        """The offset/mask branch's parameters (give them 0.1x the learning rate, as the paper)."""
        return list(self.offset_conv.parameters())

    def offsets_and_mask(self, x: torch.Tensor):
        """offset (B, 2*G*K, Ho, Wo) and mask (B, G*K, Ho, Wo) in [0, 1] or [0, 2] (None for v1)."""
        branch = self.offset_conv(x)
        split = 2 * self.offset_groups * self.kernel_size[0] * self.kernel_size[1]
        offset = branch[:, :split]
        if not self.modulated:
            return offset, None
        mask = torch.sigmoid(branch[:, split:])
        return offset, (2 * mask if self.mask_activation == "2sigmoid" else mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset, mask = self.offsets_and_mask(x)
        return deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation,
                             mask, backend=self.backend)

    def extra_repr(self) -> str:
        version = f"v2, mask={self.mask_activation}" if self.modulated else "v1"
        return (f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"offset_groups={self.offset_groups}, {version}")
