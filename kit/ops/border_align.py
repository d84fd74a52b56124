"""BorderAlign: max-pool each side of a box from its own channel group (BorderDet, arXiv 2007.11056).

A dense detector's point feature sees the middle of an object, but the box is decided by the
object's *extremes* (the topmost pixel, the leftmost, ...). BorderAlign gives every location
a feature for each side of its coarse box: it samples ``pool_size + 1`` points evenly along the
side, both ends included, reads them by bilinear interpolation, and keeps the channel-wise
maximum. Each side reads its own block of channels, so the network can learn a different
"extreme point detector" per side.

Semantics follow mmcv's ``border_align`` (``border_align_cuda_kernel.cuh``, itself from the
official cvpods kernel), which we reproduce in pure torch with :func:`torch.nn.functional.grid_sample`:

* ``input`` is (B, 4C, H, W), channel blocks ``[0, C)`` top, ``[C, 2C)`` left, ``[2C, 3C)``
  bottom, ``[3C, 4C)`` right (contiguous blocks, not interleaved);
* ``boxes`` is (B, K, 4) xyxy in feature-map pixels, pixel centres at integer coordinates
  (BorderDet uses K = H*W, one coarse box per location, but any K works);
* top and left start at (x1, y1) and step by +w/pool_size along x / +h/pool_size along y;
  bottom and right start at (x2, y2) and step *backwards* (-w/pool_size, -h/pool_size);
* a sample more than one pixel outside the map (x < -1, x > W, y < -1, y > H) reads 0, and that
  0 takes part in the max; a sample within one pixel of the map is clamped onto the edge.
  That zero padding only matters for boxes that leave the map, and BorderDet clamps its
  boxes to the map before calling the op. So by default (``outside="error"``) a box that
  leaves the map, x outside [0, W - 1] or y outside [0, H - 1], is an error: it is almost
  always a box in image pixels passed where feature-map pixels were meant.
  ``outside="zero"`` gives mmcv's padding instead;
* the maximum is strict (the first of equal maxima wins) and the gradient flows to the input
  at that sample only; boxes get no gradient (mmcv returns none for them).

Output: (B, C, K, 4), last axis in the order top, left, bottom, right.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["border_align", "BorderAlign", "border_sample_points", "SIDES"]

SIDES = ("top", "left", "bottom", "right")


OUTSIDE_MODES = ("error", "zero")


def _check_inputs(input: torch.Tensor, boxes: torch.Tensor, pool_size: int, outside: str = "error") -> None:
    if outside not in OUTSIDE_MODES:
        raise ValueError(f"outside must be one of {OUTSIDE_MODES}, got {outside!r}")
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
        raise ValueError(f"pool_size must be an int >= 1 (pool_size + 1 samples per side), got {pool_size!r}")
    if input.dim() != 4 or input.shape[1] % 4 != 0 or input.shape[1] == 0:
        raise ValueError(f"input must be (B, 4C, H, W) with the channels a multiple of 4 "
                         f"(top, left, bottom, right blocks), got {tuple(input.shape)}")
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (B, K, 4) as x1, y1, x2, y2 in feature-map pixels, got {tuple(boxes.shape)}")
    if boxes.shape[0] != input.shape[0]:
        raise ValueError(f"boxes have batch size {boxes.shape[0]} but input has {input.shape[0]}")
    if not input.is_floating_point() or not boxes.is_floating_point():
        raise ValueError(f"input and boxes must be floating point, got {input.dtype} and {boxes.dtype}")
    if boxes.numel() and not torch.isfinite(boxes).all():
        raise ValueError("boxes contain NaN or inf")
    if boxes.numel() and ((boxes[..., 2] < boxes[..., 0]).any() or (boxes[..., 3] < boxes[..., 1]).any()):
        raise ValueError("boxes must satisfy x2 >= x1 and y2 >= y1 (xyxy, not xywh)")
    if outside == "error" and boxes.numel():
        h, w = input.shape[-2:]
        tolerance = 1e-4  # rounding of boxes clamped to the map
        x, y = boxes[..., 0::2], boxes[..., 1::2]
        if (x < -tolerance).any() or (x > w - 1 + tolerance).any() or (y < -tolerance).any() \
                or (y > h - 1 + tolerance).any():
            raise ValueError(
                f"boxes must lie on the {h}x{w} feature map: x in [0, {w - 1}], y in [0, {h - 1}] "
                f"(feature-map pixels, centres at integers); got x in [{float(x.min()):.2f}, {float(x.max()):.2f}], "
                f"y in [{float(y.min()):.2f}, {float(y.max()):.2f}]. Clamp them to the map "
                f"(kit.det.borderdet.feature_map_boxes), or pass outside='zero' for mmcv's zero padding")


def border_sample_points(boxes: torch.Tensor, pool_size: int) -> torch.Tensor:
    """The sample points of every side: boxes (..., 4) -> (..., 4 sides, pool_size + 1, 2) xy.

    Side order top, left, bottom, right; top/left walk from (x1, y1), bottom/right walk back
    from (x2, y2), as in mmcv's kernel.
    """
    x1, y1, x2, y2 = boxes.unbind(-1)  # (...) each
    steps = torch.arange(pool_size + 1, device=boxes.device, dtype=boxes.dtype) / pool_size  # (P+1,)
    w, h = (x2 - x1)[..., None], (y2 - y1)[..., None]  # (..., 1)
    along = lambda start, length, sign: start[..., None] + sign * length * steps  # (..., P+1)
    fixed = lambda value: value[..., None].expand(*value.shape, pool_size + 1)
    top = torch.stack([along(x1, w, 1), fixed(y1)], -1)
    left = torch.stack([fixed(x1), along(y1, h, 1)], -1)
    bottom = torch.stack([along(x2, w, -1), fixed(y2)], -1)
    right = torch.stack([fixed(x2), along(y2, h, -1)], -1)
    return torch.stack([top, left, bottom, right], dim=-3)  # (..., 4, P+1, 2)


def _sample(input: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of every side from its own channel block: (B, 4, C, P+1, K).

    input (B, 4C, H, W); points (B, 4, P+1, K, 2) xy. One ``grid_sample`` call: the map is
    viewed as B*4 maps of C channels, each read at the points of its side.
    """
    b, four_c, h, w = input.shape
    _, _, samples_per_side, k, _ = points.shape
    points = points.reshape(b * 4, samples_per_side, k, 2)
    # align_corners=True maps -1 and 1 to the centres of the first and last pixels, so pixel
    # centres sit at integer coordinates; "border" padding is mmcv's clamp onto the edge.
    scale = points.new_tensor([max(w - 1, 1), max(h - 1, 1)])
    grid = 2 * points / scale - 1  # (a 1-pixel axis maps every coordinate to its one pixel)
    features = input.reshape(b * 4, four_c // 4, h, w).float()  # block s of image i is row 4 i + s
    # float32 coordinates and values even under AMP: bfloat16 grids would move samples by ~0.1 px
    samples = F.grid_sample(features, grid.float(), mode="bilinear", padding_mode="border", align_corners=True)
    # mmcv: a sample more than one pixel outside the map reads 0.
    x, y = points[..., 0], points[..., 1]
    inside = (x >= -1) & (x <= w) & (y >= -1) & (y <= h)  # (B*4, P+1, K)
    if not bool(inside.all()):
        samples = samples * inside[:, None].to(samples.dtype)  # (B*4, C, P+1, K)
    return samples.view(b, 4, four_c // 4, samples_per_side, k).to(input.dtype)


def border_align(input: torch.Tensor, boxes: torch.Tensor, pool_size: int = 10,
                 return_argmax: bool = False, outside: str = "error"):
    """Max-pooled border features (B, C, K, 4) of boxes (B, K, 4) on a (B, 4C, H, W) map.

    See the module docstring for the exact semantics. With ``return_argmax`` also returns the
    index (B, C, K, 4) of the winning sample along each side, in 0..pool_size. Autograd gives
    mmcv's backward: ``max`` sends the gradient to the winning sample only, and
    ``grid_sample`` spreads it over that sample's four neighbours. ``outside``: ``"error"``
    (default) rejects boxes that leave the map, ``"zero"`` zero-pads them as mmcv does.
    """
    _check_inputs(input, boxes, pool_size, outside)
    points = border_sample_points(boxes.detach().float(), pool_size)  # (B, K, 4, P+1, 2)
    points = points.permute(0, 2, 3, 1, 4)  # (B, 4, P+1, K, 2)
    pooled, argmax = _sample(input, points).max(dim=3)  # (B, 4, C, K); the first maximum wins
    pooled, argmax = pooled.permute(0, 2, 3, 1), argmax.permute(0, 2, 3, 1)  # (B, C, K, 4)
    return (pooled, argmax) if return_argmax else pooled


class BorderAlign(nn.Module):
    """Module form of :func:`border_align` (mmcv's ``BorderAlign(pool_size)``)."""

    def __init__(self, pool_size: int = 10, outside: str = "error"):
        super().__init__()
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be an int >= 1, got {pool_size!r}")
        if outside not in OUTSIDE_MODES:
            raise ValueError(f"outside must be one of {OUTSIDE_MODES}, got {outside!r}")
        self.pool_size, self.outside = pool_size, outside

    def forward(self, input: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return border_align(input, boxes, self.pool_size, outside=self.outside)

    def extra_repr(self) -> str:
        return f"pool_size={self.pool_size}, outside={self.outside!r}"
