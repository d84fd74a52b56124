"""RoIAlign as two small matrix products: the same numbers as ``torchvision.ops.roi_align``, a fast CPU backward.

RoIAlign (Mask R-CNN, He et al. 2017) pools each box into ``p x p`` bins; a bin's value is the
mean of ``s x s`` bilinear samples at regularly spaced points inside it. Bilinear interpolation
is a product of two 1-D interpolations, and the sample points of a box form a grid (one set of
``p s`` rows, one of ``p s`` columns), so for one box and one channel::

    pooled[i, j] = sum_y sum_x  Wy[i, y] * feature[y, x] * Wx[j, x]      (Wy: p x H, Wx: p x W)

where row ``i`` of ``Wy`` averages the 1-D interpolation weights of the ``s`` sample rows of bin
row ``i`` (likewise ``Wx``). Forward and backward are then two ``einsum`` products over the map,
which a CPU runs in parallel and vectorised; torchvision's CPU backward kernel loops over the
samples one by one, and on the kit's small maps it costs most of a two-stage training step
(``bench/bench_roi_align.py`` times both).

The weights follow torchvision's kernel (``csrc/ops/cpu/roi_align_kernel.cpp``) exactly:
``aligned=True`` shifts the box by half a pixel; ``aligned=False`` makes boxes at least one pixel
wide and high; a sample more than one pixel outside the map contributes zero; one inside that
margin is clamped to the border; a sample on the last row or column reads that row or column.

Choices: this path is used on the CPU with a fixed ``sampling_ratio > 0`` and maps of at most
``MAX_DENSE_CELLS`` cells (the products cost ``boxes x p x H x W`` per channel); otherwise
(CUDA, the adaptive ``sampling_ratio=0``, large maps) it calls torchvision's kernel, which gives
the same values. No gradient flows to the boxes, as in torchvision.
"""
from __future__ import annotations

import torch
from torchvision.ops import roi_align as torchvision_roi_align
from torchvision.ops.poolers import LevelMapper

__all__ = ["roi_align", "separable_roi_align", "interpolation_weights", "MultiLevelRoIAlign", "MAX_DENSE_CELLS"]

MAX_DENSE_CELLS = 64 * 64  # beyond this map size torchvision's kernel is used


def _check_inputs(features: torch.Tensor, boxes, output_size: int, sampling_ratio: int) -> None:
    # values are checked except on meta tensors (shapes only: FLOPs are counted on them), which have none
    if not isinstance(features, torch.Tensor) or features.dim() != 4:
        raise ValueError(f"features must be a (B, C, H, W) tensor, got "
                         f"{tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__}")
    if not features.is_floating_point():
        raise TypeError(f"features must be floating point, got {features.dtype}")
    if features.shape[-2] == 0 or features.shape[-1] == 0:
        raise ValueError(f"features must be a non-empty map, got {tuple(features.shape)}")
    if features.device.type != "meta" and not torch.isfinite(features).all():
        raise ValueError("features contain NaN or inf")
    if isinstance(output_size, bool) or not isinstance(output_size, int) or output_size < 1:
        raise ValueError(f"output_size must be an int >= 1 (one side of the square grid of bins), got {output_size!r}")
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int):
        raise ValueError(f"sampling_ratio must be an int (> 0 samples per bin side, <= 0 adaptive), got {sampling_ratio!r}")
    if not isinstance(boxes, (list, tuple)) or len(boxes) != features.shape[0]:
        raise ValueError(f"boxes must be a list of (R_i, 4) xyxy tensors, one per image ({features.shape[0]}), "
                         f"got {type(boxes).__name__} of length {len(boxes) if hasattr(boxes, '__len__') else '?'}")
    for i, b in enumerate(boxes):
        if not isinstance(b, torch.Tensor) or b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes[{i}] must be an (R, 4) xyxy tensor, got "
                             f"{tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__}")
        if not b.is_floating_point():
            raise TypeError(f"boxes[{i}] must be floating point pixels, got {b.dtype}")
        if b.device.type == "meta":
            continue
        if not torch.isfinite(b).all():
            raise ValueError(f"boxes[{i}] contain NaN or inf")
        if (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
            raise ValueError(f"boxes[{i}] must have x2 >= x1 and y2 >= y1 (xyxy pixels)")


def interpolation_weights(start: torch.Tensor, length: torch.Tensor, size: int, output_size: int,
                          sampling_ratio: int) -> torch.Tensor:
    """1-D RoIAlign weights along one axis: start, length (R,) in map cells -> (R, output_size, size).

    Row ``i`` is the mean, over the ``sampling_ratio`` samples of bin ``i``, of each sample's
    linear interpolation weights on the ``size`` cells (torchvision's border rules).
    """
    steps = output_size * sampling_ratio
    fraction = (torch.arange(steps, device=start.device, dtype=start.dtype) + 0.5) / steps  # (p s,)
    coord = start[:, None] + length[:, None] * fraction  # (R, p s) sample positions in cells
    inside = ((coord >= -1) & (coord <= size)).to(start.dtype)  # farther out than one cell: weight 0
    coord = coord.clamp(min=0)
    low = coord.floor().clamp(max=size - 1)
    high = (low + 1).clamp(max=size - 1)
    coord = torch.where(low >= size - 1, low, coord)  # on or past the last cell: read the last cell
    upper = coord - low  # (R, p s) weight of the higher cell
    weights = start.new_zeros(coord.shape + (size,))  # (R, p s, size)
    weights.scatter_add_(-1, low.long()[..., None], ((1 - upper) * inside)[..., None])
    weights.scatter_add_(-1, high.long()[..., None], (upper * inside)[..., None])
    return weights.view(-1, output_size, sampling_ratio, size).mean(2)  # (R, p, size)


def separable_roi_align(features: torch.Tensor, boxes: list, output_size: int, spatial_scale: float,
                        sampling_ratio: int, aligned: bool) -> torch.Tensor:
    """The two-product RoIAlign: features (B, C, H, W), boxes [(R_i, 4)] xyxy px -> (sum R_i, C, p, p)."""
    _, channels, height, width = features.shape
    counts = [len(b) for b in boxes]
    if sum(counts) == 0:
        return features.new_zeros(0, channels, output_size, output_size)
    # (R, 4) in cells; detached: no gradient to the boxes, as torchvision's kernel (the weights would give one)
    cells = torch.cat(list(boxes)).detach().to(features.dtype) * spatial_scale - (0.5 if aligned else 0.0)
    x1, y1, x2, y2 = cells.unbind(-1)
    box_w, box_h = x2 - x1, y2 - y1
    if not aligned:  # torchvision: legacy boxes are at least one cell wide and high
        box_w, box_h = box_w.clamp(min=1.0), box_h.clamp(min=1.0)
    rows = interpolation_weights(y1, box_h, height, output_size, sampling_ratio)  # (R, p, H)
    cols = interpolation_weights(x1, box_w, width, output_size, sampling_ratio)  # (R, p, W)
    pieces = []
    for image, (image_rows, image_cols) in enumerate(zip(rows.split(counts), cols.split(counts))):
        if counts[image]:
            along_rows = torch.einsum("riy,cyx->rcix", image_rows, features[image])  # (R_i, C, p, W)
            pieces.append(torch.einsum("rcix,rjx->rcij", along_rows, image_cols))  # (R_i, C, p, p)
    return torch.cat(pieces)


def roi_align(features: torch.Tensor, boxes: list, output_size: int, spatial_scale: float = 1.0,
              sampling_ratio: int = 2, aligned: bool = True) -> torch.Tensor:
    """``torchvision.ops.roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, aligned)``
    for a list of per-image boxes, by :func:`separable_roi_align` where that is faster (CPU, fixed
    sampling ratio, small maps) and by torchvision's kernel elsewhere. -> (sum R_i, C, p, p)."""
    _check_inputs(features, boxes, output_size, sampling_ratio)
    dense = (features.device.type == "cpu" and sampling_ratio > 0
             and features.shape[-2] * features.shape[-1] <= MAX_DENSE_CELLS)
    if dense:
        return separable_roi_align(features, list(boxes), output_size, spatial_scale, sampling_ratio, aligned)
    return torchvision_roi_align(features, [b.to(features.dtype) for b in boxes], output_size, spatial_scale,
                                 sampling_ratio, aligned)


class MultiLevelRoIAlign(torch.nn.Module):
    """``torchvision.ops.MultiScaleRoIAlign`` on a list of pyramid levels, pooling with :func:`roi_align`.

    Each box goes to one level by torchvision's rule (``LevelMapper``: level
    ``floor(canonical_level + log2(sqrt(area) / canonical_scale))`` clamped to the levels given),
    and is pooled there with ``aligned=False``, as MultiScaleRoIAlign does. ``strides`` are the
    levels' strides in pixels (powers of two, finest first).
    forward(levels [(B, C, H_l, W_l)], boxes [(R_i, 4)] xyxy px) -> (sum R_i, C, p, p), in box order.
    """

    def __init__(self, strides, output_size: int = 7, sampling_ratio: int = 2, canonical_scale: int = 224,
                 canonical_level: int = 4):
        super().__init__()
        strides = list(strides)
        if not strides or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 or s & (s - 1) for s in strides):
            raise ValueError(f"strides must be a non-empty list of powers of two (pixels), got {strides!r}")
        if strides != sorted(strides):
            raise ValueError(f"strides must be finest first (increasing), got {strides!r}")
        self.strides, self.output_size, self.sampling_ratio = strides, output_size, sampling_ratio
        levels = [s.bit_length() - 1 for s in strides]  # log2 stride
        self.mapper = LevelMapper(levels[0], levels[-1], canonical_scale=canonical_scale,
                                  canonical_level=canonical_level)

    def forward(self, levels: list, boxes: list) -> torch.Tensor:
        if len(levels) != len(self.strides):
            raise ValueError(f"expected {len(self.strides)} levels (strides {self.strides}), got {len(levels)}")
        channels = levels[0].shape[1]
        all_boxes = torch.cat([b.to(levels[0].dtype) for b in boxes])  # (R, 4)
        image_of = torch.cat([torch.full((len(b),), i, device=all_boxes.device) for i, b in enumerate(boxes)])
        level_of = self.mapper([all_boxes]) if len(all_boxes) else image_of  # (R,) level index per box
        pooled = levels[0].new_zeros(len(all_boxes), channels, self.output_size, self.output_size)
        for index, (level, stride) in enumerate(zip(levels, self.strides)):
            chosen = (level_of == index).nonzero().flatten()  # boxes on this level, in box order
            if len(chosen) == 0:
                continue
            per_image = [all_boxes[chosen[image_of[chosen] == i]] for i in range(level.shape[0])]
            order = torch.cat([chosen[image_of[chosen] == i] for i in range(level.shape[0])])
            pooled[order] = roi_align(level, per_image, self.output_size, 1.0 / stride, self.sampling_ratio,
                                      aligned=False).to(pooled.dtype)
        return pooled
