"""Position-sensitive RoIAlign: every output bin reads its own channel group (R-FCN, Light-Head R-CNN).

RoIAlign cuts a box into ``ph x pw`` bins and averages ``S x S`` bilinear samples in each bin,
on *every* channel. Position-sensitive RoIAlign (PSRoIAlign; R-FCN arXiv 1605.06409 pools this
way, Light-Head R-CNN arXiv 1711.07264 aligns) gives each bin a different block of channels: the
feature map has ``C * ph * pw`` channels and bin ``(i, j)`` of output channel ``c`` reads only
input channel ``(c * ph + i) * pw + j``. The map learns "top-left part of an object" in one
group, "bottom-right part" in another, and the pooled ``(K, C, ph, pw)`` tensor comes out
already spatially arranged, at a cost per RoI that does not grow with the channel count
(Light-Head pools C = 10 channels per bin out of a thin 490-channel map).

The channel groups are *interleaved*, not contiguous: group ``g = i * pw + j`` is the input
channels ``g, g + ph*pw, g + 2*ph*pw, ...`` (:func:`bin_channel_map` lists them).

Semantics follow ``torchvision.ops.ps_roi_align`` (``csrc/ops/cpu/ps_roi_align_kernel.cpp``),
which we reproduce in pure torch (sample coordinates bit for bit; the sums run in another order,
so results differ by ~1e-16 in float64 and ~1e-7 in float32):

* boxes are ``(x1, y1, x2, y2)`` in image pixels; the RoI on the map starts at
  ``x1 * spatial_scale - 0.5`` and ends at ``x2 * spatial_scale - 0.5``. That half-pixel shift is
  *always on*: torchvision's ps_roi_align has no ``aligned`` switch and behaves as
  ``roi_align(..., aligned=True)`` (pixel centres at integer map coordinates). Like that mode,
  the RoI's size is *not* clamped to at least one pixel;
* bin size = RoI size / bins; ``S`` samples per bin along each axis at
  ``bin_start + (s + 0.5) * bin_size / S``; ``sampling_ratio > 0`` fixes ``S``, ``<= 0`` is
  adaptive, ``S = ceil(RoI size / bins)`` per RoI and per axis;
* a sample with y < -1, y > H, x < -1 or x > W reads 0 (and counts in the average); any other
  sample is clamped onto the map and read by bilinear interpolation;
* the bin is the plain mean of its ``S_y * S_x`` samples; the gradient flows to the features
  only (torchvision gives boxes no gradient, so they are detached here).

One deliberate difference: in adaptive mode a box of exactly zero width (or height) gets
``S = ceil(0) = 0`` samples, and torchvision divides 0 by 0 and returns NaN for the whole RoI;
we take one sample on that axis instead.

Why torchvision and not Light-Head's own TF kernel (``lib_psalign_pooling_ave``): that kernel has
the same channel order and the same 2 x 2 samples at 1/4 and 3/4 of each bin, but no half-pixel
shift, and it clamps samples into [0.001, W - 1.001] instead of zeroing them off the map; it is
not a maintained library, and torchvision's op is what a PyTorch reader would call.

Vectorised by explicit index arithmetic, no loop over RoIs: the sample grid of a bin is a
product of a row grid and a column grid, so coordinates and bilinear weights are computed per
axis, (K, ph, S_y) and (K, pw, S_x), and combined into one gather of the four neighbours of
every sample from the features laid out as rows of C values. Adaptive mode pads every RoI to the
largest S and masks the padding, so its memory grows with the largest RoI.
"""
from __future__ import annotations

import math

import torch

__all__ = ["ps_roi_align", "bin_channel_map"]


def _output_size(output_size) -> tuple[int, int]:
    pair = (output_size, output_size) if not isinstance(output_size, (tuple, list)) else tuple(output_size)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pair):
        raise ValueError(f"output_size must be an int >= 1 or a pair (ph, pw) of them, got {output_size!r}")
    return pair


def bin_channel_map(ph: int, pw: int, num_channels: int) -> torch.Tensor:
    """Which input channel each output bin reads: a (ph, pw, C) long tensor, C = num_channels / (ph*pw).

    ``map[i, j, c] = (c * ph + i) * pw + j`` is the input channel that output channel ``c`` reads in
    bin ``(i, j)``; ``map[..., 0]`` is the (ph, pw) map of channel-group indices ``i * pw + j``
    (group g = input channels g, g + ph*pw, ...). ``num_channels`` is the input channel count.
    """
    ph, pw = _output_size((ph, pw))
    if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1 \
            or num_channels % (ph * pw):
        raise ValueError(f"num_channels must be a positive multiple of ph * pw = {ph * pw} "
                         f"(C channels per bin), got {num_channels!r}")
    out_channels = num_channels // (ph * pw)
    c = torch.arange(out_channels).view(1, 1, -1)  # (1, 1, C)
    i, j = torch.arange(ph).view(-1, 1, 1), torch.arange(pw).view(1, -1, 1)  # (ph, 1, 1), (1, pw, 1)
    return (c * ph + i) * pw + j  # (ph, pw, C)


def _rois(features: torch.Tensor, boxes) -> torch.Tensor:
    """Boxes in either torchvision form -> one (K, 5) tensor [batch_index, x1, y1, x2, y2], checked."""
    num_images = features.shape[0]
    if isinstance(boxes, (list, tuple)):
        if len(boxes) != num_images:
            raise ValueError(f"boxes has {len(boxes)} tensors for a batch of {num_images} images "
                             f"(one (Ki, 4) tensor per image, possibly empty)")
        for index, b in enumerate(boxes):
            if not isinstance(b, torch.Tensor) or b.dim() != 2 or b.shape[1] != 4:
                shape = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
                raise ValueError(f"boxes[{index}] must be a (Ki, 4) tensor of x1, y1, x2, y2, got {shape}")
            if not b.is_floating_point():
                raise TypeError(f"boxes[{index}] must be floating point, got {b.dtype}")
        ids = [torch.full_like(b[:, :1], index) for index, b in enumerate(boxes)]
        return _check_coordinates(torch.cat([torch.cat(ids), torch.cat(list(boxes))], dim=1))
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"boxes must be a (K, 5) tensor or a list of (Ki, 4) tensors, got {type(boxes).__name__}")
    if boxes.dim() != 2 or boxes.shape[1] != 5:
        raise ValueError(f"boxes must be (K, 5) as [batch_index, x1, y1, x2, y2] (or a list of (Ki, 4) "
                         f"tensors), got {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        raise TypeError(f"boxes must be floating point, got {boxes.dtype}")
    batch_index = boxes[:, 0]
    if not torch.isfinite(batch_index).all() or (batch_index != batch_index.round()).any():
        raise ValueError("boxes[:, 0] must hold integral batch indices")
    if (batch_index < 0).any() or (batch_index > num_images - 1).any():
        raise ValueError(f"boxes[:, 0] must be batch indices in [0, {num_images - 1}], got values in "
                         f"[{float(batch_index.min()):g}, {float(batch_index.max()):g}]")
    return _check_coordinates(boxes)


def _check_coordinates(rois: torch.Tensor) -> torch.Tensor:
    xyxy = rois[:, 1:]  # (K, 4)
    if not torch.isfinite(xyxy).all():
        raise ValueError("boxes contain NaN or inf")
    if (xyxy[:, 2] < xyxy[:, 0]).any() or (xyxy[:, 3] < xyxy[:, 1]).any():
        raise ValueError("boxes must satisfy x2 >= x1 and y2 >= y1 (xyxy, not xywh)")
    return rois


def _check_features(features: torch.Tensor, ph: int, pw: int) -> None:
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a tensor (N, C * ph * pw, H, W), got {type(features).__name__}")
    if features.dim() != 4 or features.shape[1] == 0 or features.shape[1] % (ph * pw):
        raise ValueError(f"features must be (N, C * ph * pw, H, W) with the channels a positive multiple of "
                         f"ph * pw = {ph * pw}, got {tuple(features.shape)}")
    if features.shape[0] == 0 or features.shape[2] == 0 or features.shape[3] == 0:
        raise ValueError(f"features must have at least one image and a non-empty map, got {tuple(features.shape)}")
    if not features.is_floating_point():
        raise TypeError(f"features must be floating point, got {features.dtype}")
    if not torch.isfinite(features).all():
        raise ValueError("features contain NaN or inf")


def _check_options(spatial_scale, sampling_ratio) -> None:
    if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, (int, float)) \
            or not math.isfinite(spatial_scale) or spatial_scale <= 0:
        raise ValueError(f"spatial_scale must be a finite number > 0 (map pixels per image pixel, "
                         f"e.g. 1/16), got {spatial_scale!r}")
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int):
        raise ValueError(f"sampling_ratio must be an int (> 0: that many samples per bin and axis, "
                         f"<= 0: adaptive), got {sampling_ratio!r}")


def _axis_samples(start: torch.Tensor, end: torch.Tensor, bins: int, sampling_ratio: int):
    """Sample coordinates along one axis: (K, bins, S) coords, (K, S) valid, (K,) samples per bin.

    Same operations in the same order as torchvision's kernel, so float32 coordinates match bit for bit.
    """
    size = end - start  # (K,) not clamped to >= 1
    bin_size = size / bins  # (K,)
    if sampling_ratio > 0:
        grid = torch.full_like(size, sampling_ratio)  # (K,)
    else:
        grid = torch.ceil(size / bins).clamp(min=1)  # (K,); torchvision: 0 (and NaN) for a zero size
    most = int(grid.max()) if grid.numel() else 1  # S, the largest grid (pads adaptive RoIs)
    steps = torch.arange(most, dtype=size.dtype, device=size.device)  # (S,)
    bin_start = torch.arange(bins, dtype=size.dtype, device=size.device) * bin_size[:, None] + start[:, None]
    offset = (steps + 0.5) * bin_size[:, None] / grid[:, None]  # (K, S)
    coords = bin_start[:, :, None] + offset[:, None, :]  # (K, bins, S)
    return coords, steps < grid[:, None], grid


def _axis_bilinear(coords: torch.Tensor, length: int, valid: torch.Tensor):
    """Neighbour indices (..., 2) and weights (..., 2) of coords (K, bins, S) on an axis of ``length``.

    Outside [-1, length] the weights are 0 (torchvision's "empty" sample), so are padded samples
    (``valid`` False); inside, the coordinate is clamped onto [0, length - 1].
    """
    inside = (coords >= -1) & (coords <= length) & valid[:, None, :]  # (K, bins, S)
    clamped = coords.clamp(0, length - 1)
    low = clamped.floor()
    high = (low + 1).clamp(max=length - 1)
    frac = clamped - low  # 0 at a clamped edge
    weights = torch.stack([1 - frac, frac], dim=-1) * inside[..., None]  # (K, bins, S, 2)
    return torch.stack([low, high], dim=-1).long(), weights


def ps_roi_align(features: torch.Tensor, boxes, output_size, spatial_scale: float = 1.0,
                 sampling_ratio: int = 2) -> torch.Tensor:
    """Position-sensitive RoIAlign: (N, C*ph*pw, H, W) features, K boxes -> (K, C, ph, pw).

    ``boxes``: a (K, 5) tensor [batch_index, x1, y1, x2, y2] or a list of N (Ki, 4) tensors, in
    image pixels; ``spatial_scale`` maps them onto the map (1/16 for a stride-16 map).
    ``sampling_ratio``: samples per bin and axis, <= 0 adaptive. The default 2 is Light-Head's
    (torchvision's default is -1). Same result as ``torchvision.ops.ps_roi_align`` (module docstring).
    """
    ph, pw = _output_size(output_size)
    _check_features(features, ph, pw)
    _check_options(spatial_scale, sampling_ratio)
    rois = _rois(features, boxes)  # (K, 5)
    n, channels, h, w = features.shape
    out_channels, bins = channels // (ph * pw), ph * pw
    dtype = torch.promote_types(features.dtype, torch.float32)  # coordinates: at least float32
    rois = rois.detach().to(features.device, dtype)  # (K, 5); boxes get no gradient, as in torchvision
    scale = torch.tensor(spatial_scale, dtype=dtype, device=rois.device)  # cast like the kernel's T
    start, end = rois[:, 1:3] * scale - 0.5, rois[:, 3:5] * scale - 0.5  # (K, 2) as (x, y), half-pixel shift

    # 1. samples per axis: rows (K, ph, Sy), columns (K, pw, Sx), and the count per bin (K,)
    rows, valid_rows, grid_rows = _axis_samples(start[:, 1], end[:, 1], ph, sampling_ratio)
    cols, valid_cols, grid_cols = _axis_samples(start[:, 0], end[:, 0], pw, sampling_ratio)
    count = grid_rows * grid_cols  # (K,)

    # 2. bilinear neighbours and weights per axis: (K, ph, Sy, 2) and (K, pw, Sx, 2)
    row_index, row_weight = _axis_bilinear(rows, h, valid_rows)
    col_index, col_weight = _axis_bilinear(cols, w, valid_cols)

    # 3. combine the axes: every (bin i, bin j, sample sy, sample sx, row corner, col corner)
    #    -> index into the map and weight, (K, ph, pw, Sy, Sx, 2, 2) each
    pixel = row_index[:, :, None, :, None, :, None] * w + col_index[:, None, :, None, :, None, :]
    weight = row_weight[:, :, None, :, None, :, None] * col_weight[:, None, :, None, :, None, :]
    # bin (i, j) of image b reads channel group i * pw + j of that image: the table row below
    group = torch.arange(bins, device=rois.device).view(1, ph, pw)  # (1, ph, pw)
    plane = rois[:, 0].long().view(-1, 1, 1) * bins + group  # (K, ph, pw): (image, group) pair
    flat = plane[..., None, None, None, None] * (h * w) + pixel  # (K, ph, pw, Sy, Sx, 2, 2)

    # 4. the features as a table of rows of C values, one row per (image, group, pixel):
    #    (N, C * bins, H, W) -> (N, C, bins, H, W) -> (N, bins, H, W, C) -> (N * bins * H * W, C)
    table = features.reshape(n, out_channels, bins, h, w).permute(0, 2, 3, 4, 1).reshape(-1, out_channels)
    k, samples = rois.shape[0], rows.shape[-1] * cols.shape[-1] * 4  # Sy * Sx * 4 per bin
    values = table.index_select(0, flat.reshape(-1)).view(k, ph, pw, samples, out_channels)  # (K, ph, pw, Sy*Sx*4, C)

    # 5. weighted sum over samples and neighbours, mean over the samples of a bin -> (K, C, ph, pw)
    #    (a broadcast multiply and sum: ~2x faster on CPU than einsum's tiny batched matmuls)
    weight = weight.reshape(k, ph, pw, samples, 1).to(dtype)  # (K, ph, pw, Sy*Sx*4, 1)
    pooled = (values.to(dtype) * weight).sum(dim=3).permute(0, 3, 1, 2)  # (K, C, ph, pw)
    return (pooled / count.view(-1, 1, 1, 1)).to(features.dtype)
