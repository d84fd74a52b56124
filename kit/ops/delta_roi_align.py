"""RoIAlign with a learned shift per bin (TSD's Δc pooling) or per RoI (its Δr pooling), by ``grid_sample``.

TSD ("Revisiting the Sibling Head in Object Detector", Song et al. 2020, the decoupling head of
the OpenImages 2019 winner) pools each proposal twice from the same map: for the classifier,
every one of the p x p bins moves by its own offset ``Δc[:, :, i, j]``; for the regressor, the
whole RoI moves by one offset ``Δr``. Both offsets are in units of the RoI's size times γ
(``trans_std = 0.1`` in the official ``DeltaCPooling`` / ``DeltaRPooling``, CUDA deformable
RoI pooling kernels): bin (i, j) of RoI r samples at

    x = x1 + (j + (s + 0.5) / S) * w / p + γ * Δx[r, i, j] * w,     s = 0 .. S - 1 (S = sampling_ratio)

and the same in y, averaging its S x S bilinear samples. With Δ = 0 this is exactly
:func:`torchvision.ops.roi_align` with ``aligned=True`` (the half-pixel shift) and the same
sampling ratio, boundary rule included (a sample beyond one pixel outside the map reads 0, one
inside that band reads the clamped border), which ``tests/test_delta_roi_align.py`` checks.
A Δr pooling is the same with one offset broadcast to every bin: RoIAlign of the shifted box.

Why not torchvision: ``roi_align`` has no gradient with respect to the boxes, and the offsets
must learn from the features they pool (the official kernels give that gradient);
``torch.nn.functional.grid_sample`` does. The official kernels are deformable *PS* RoI pooling
with ``group_size=1`` and 4 samples per part; the kit keeps RoIAlign's S x S samples per bin so
that Δ = 0 is the sibling head's own pooling.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["delta_roi_align", "roi_format"]


def roi_format(boxes) -> torch.Tensor:
    """[(R_i, 4)] per image or a (R, 5) tensor ``(batch_index, x1, y1, x2, y2)`` -> (R, 5)."""
    if isinstance(boxes, torch.Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"rois must be (R, 5) (batch index, x1, y1, x2, y2), got {tuple(boxes.shape)}")
        return boxes
    if not isinstance(boxes, (list, tuple)):
        raise TypeError(f"boxes must be a list of (R_i, 4) tensors or a (R, 5) tensor, got {type(boxes).__name__}")
    for i, b in enumerate(boxes):
        if not isinstance(b, torch.Tensor) or b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes[{i}] must be (R_i, 4) xyxy, got {getattr(b, 'shape', type(b).__name__)}")
    if not boxes:
        return torch.zeros(0, 5)
    index = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)])
    return torch.cat([index, torch.cat(list(boxes))], 1)


def _check(features: torch.Tensor, rois: torch.Tensor, offsets, output_size: int, sampling_ratio: int,
           gamma: float) -> None:
    if features.dim() != 4:
        raise ValueError(f"features must be (B, C, h, w), got {tuple(features.shape)}")
    for name, value in (("output_size", output_size), ("sampling_ratio", sampling_ratio)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not (isinstance(gamma, (int, float)) and gamma == gamma and abs(gamma) != float("inf")):
        raise ValueError(f"gamma must be a finite number, got {gamma!r}")
    if not torch.isfinite(rois).all():
        raise ValueError("rois must be finite (NaN/inf box coordinates)")
    if rois.numel() and (rois[:, 0].min() < 0 or rois[:, 0].max() >= features.shape[0]
                         or (rois[:, 0] != rois[:, 0].round()).any()):
        raise ValueError(f"roi batch indices must be whole numbers in [0, {features.shape[0] - 1}]")
    if offsets is not None:
        allowed = ((rois.shape[0], 2, output_size, output_size), (rois.shape[0], 2))
        if tuple(offsets.shape) not in allowed:
            raise ValueError(f"offsets must be (R, 2, p, p) per bin or (R, 2) per RoI = {allowed}, "
                             f"got {tuple(offsets.shape)}")
        if not torch.isfinite(offsets).all():
            raise ValueError("offsets must be finite (NaN/inf: a diverged offset branch?)")


def delta_roi_align(features: torch.Tensor, boxes, offsets: torch.Tensor | None = None, output_size: int = 7,
                    spatial_scale: float = 1 / 16, sampling_ratio: int = 2, gamma: float = 0.1) -> torch.Tensor:
    """RoIAlign (aligned) of ``boxes`` on ``features`` with bins moved by ``gamma * offsets * (w, h)``.

    features (B, C, h, w); boxes [(R_i, 4)] xyxy image px per image, or (R, 5); offsets (R, 2, p, p)
    (channel 0 x, 1 y: Δc, one per bin) or (R, 2) (Δr, one per RoI), None = no shift.
    Returns (R, C, p, p), differentiable in ``features`` and ``offsets``.
    """
    rois = roi_format(boxes).to(features.dtype)
    _check(features, rois, offsets, output_size, sampling_ratio, gamma)
    p, s = output_size, sampling_ratio
    num_rois, (height, width) = rois.shape[0], features.shape[-2:]
    if num_rois == 0:
        return features.new_zeros(0, features.shape[1], p, p)
    x1, y1, x2, y2 = (rois[:, 1:] * spatial_scale - 0.5).unbind(1)  # (R,) each, map cells, aligned
    w, h = x2 - x1, y2 - y1  # (R,)
    steps = (torch.arange(p, dtype=features.dtype, device=features.device)[:, None]
             + (torch.arange(s, dtype=features.dtype, device=features.device) + 0.5) / s).reshape(p * s) / p  # (pS,)
    xs = (x1[:, None] + steps * w[:, None])[:, None, :].expand(num_rois, p * s, p * s)  # (R, pS, pS)
    ys = (y1[:, None] + steps * h[:, None])[:, :, None].expand(num_rois, p * s, p * s)
    if offsets is not None:
        per_bin = offsets.to(features.dtype)
        if per_bin.dim() == 2:
            per_bin = per_bin[:, :, None, None].expand(num_rois, 2, p, p)  # Δr: one shift for every bin
        per_bin = per_bin.repeat_interleave(s, 2).repeat_interleave(s, 3)  # (R, 2, pS, pS), a bin's samples alike
        xs = xs + gamma * per_bin[:, 0] * w[:, None, None]
        ys = ys + gamma * per_bin[:, 1] * h[:, None, None]
    # torchvision's boundary rule: a sample more than one cell outside the map reads 0, else the clamped
    # border. Clamped samples go to a map padded by one zero cell; the ones outside to its zero corner.
    inside = (xs >= -1) & (xs <= width) & (ys >= -1) & (ys <= height)  # (R, pS, pS)
    xs = torch.where(inside, xs.clamp(0, width - 1) + 1, torch.zeros_like(xs))
    ys = torch.where(inside, ys.clamp(0, height - 1) + 1, torch.zeros_like(ys))
    padded = F.pad(features, (1, 1, 1, 1))  # (B, C, h + 2, w + 2)
    grid = torch.stack([(2 * xs + 1) / (width + 2) - 1, (2 * ys + 1) / (height + 2) - 1], -1)  # align_corners=False
    pooled = features.new_zeros(num_rois, features.shape[1], p, p)
    image_index = rois[:, 0].long()
    for b in image_index.unique().tolist():  # one grid_sample per image: its RoIs' grids stacked in height
        rows = torch.where(image_index == b)[0]
        stacked = grid[rows].reshape(1, len(rows) * p * s, p * s, 2)
        sampled = F.grid_sample(padded[b:b + 1], stacked, mode="bilinear", padding_mode="zeros",
                                align_corners=False)  # (1, C, R_b pS, pS)
        bins = F.avg_pool2d(sampled, s)  # (1, C, R_b p, p): the mean of each bin's S x S samples
        pooled[rows] = bins[0].view(features.shape[1], len(rows), p, p).transpose(0, 1)
    return pooled  # (R, C, p, p)
