"""Multi-scale deformable attention (Deformable DETR, Zhu et al., arXiv 2010.04159).

A query does not look at every pixel. Each of its ``M`` heads samples ``P`` points on each of
``L`` feature levels, at learned offsets around the query's reference point, and averages the
sampled values with learned weights that sum to one over all ``L * P`` samples:

.. math::

    \\mathrm{MSDA}(z_q, \\hat p_q, \\{x^l\\}) = \\sum_m W_m \\Big[\\sum_{l=1}^{L} \\sum_{k=1}^{P}
        A_{mlqk}\\, W'_m x^l\\big(\\phi_l(\\hat p_q) + \\Delta p_{mlqk}\\big)\\Big]

The cost is linear in the number of pixels (dense attention is quadratic).

Conventions, as in the official code (``ms_deform_attn_core_pytorch`` and ``MSDeformAttn`` in
fundamentalvision/Deformable-DETR):

* locations are normalised ``(x, y)`` in [0, 1]; pixel ``(i, j)`` of a level has its centre at
  ``((j + 0.5) / W, (i + 0.5) / H)``. Sampling is ``grid_sample(2 * loc - 1, bilinear,
  zeros, align_corners=False)``, so a location slightly outside [0, 1] still takes part of a
  border pixel, and beyond half a pixel it reads zeros. Nothing is clipped.
* ``spatial_shapes`` rows are ``(H, W)`` but locations are ``(x, y)``: offsets are divided by
  ``(W, H)`` (the official repository fixed exactly this bug on 2020-12-07).
* ``value`` holds the levels concatenated in ``spatial_shapes`` order, each flattened row-major
  (index ``h * W + w``); the output channel of head ``m``, channel ``d`` is ``m * D + d``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ms_deform_attn", "MSDeformAttn", "encoder_reference_points", "level_start_index",
           "check_spatial_shapes"]


def check_spatial_shapes(spatial_shapes, num_values: int | None = None) -> list[tuple[int, int]]:
    """Validate ``spatial_shapes`` (L, 2) of ``(H, W)`` and return it as a list of int pairs.

    With ``num_values`` it also checks that the levels hold exactly that many values (S).
    """
    shapes = torch.as_tensor(spatial_shapes)
    if shapes.dim() != 2 or shapes.shape[1] != 2 or shapes.shape[0] < 1:
        raise ValueError(f"spatial_shapes must be (L, 2) rows of (H, W) with L >= 1, got shape {tuple(shapes.shape)}")
    if shapes.is_floating_point() or shapes.is_complex():
        raise ValueError(f"spatial_shapes must hold integers, got dtype {shapes.dtype}")
    pairs = [(int(h), int(w)) for h, w in shapes.tolist()]
    if any(h < 1 or w < 1 for h, w in pairs):
        raise ValueError(f"every level needs H >= 1 and W >= 1, got {pairs}")
    if num_values is not None and sum(h * w for h, w in pairs) != num_values:
        raise ValueError(f"spatial_shapes {pairs} hold {sum(h * w for h, w in pairs)} values, "
                         f"but value has S = {num_values}: the sum of H * W over levels must equal S")
    return pairs


def level_start_index(spatial_shapes) -> torch.Tensor:
    """(L,) index of each level's first value in the concatenated sequence."""
    pairs = check_spatial_shapes(spatial_shapes)
    sizes = torch.tensor([h * w for h, w in pairs])
    return torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])


def _check_inputs(value, shapes, sampling_locations, attention_weights) -> None:
    if value.dim() != 4:
        raise ValueError(f"value must be (N, S, M, D), got shape {tuple(value.shape)}")
    n, _, heads, _ = value.shape
    levels = len(shapes)
    loc, weights = sampling_locations, attention_weights
    if loc.dim() != 6 or loc.shape[-1] != 2 or loc.shape[0] != n or loc.shape[2] != heads or loc.shape[3] != levels:
        raise ValueError(
            f"sampling_locations must be (N, Lq, M, L, P, 2) = ({n}, Lq, {heads}, {levels}, P, 2) "
            f"with (x, y) last, got shape {tuple(loc.shape)}")
    if tuple(weights.shape) != tuple(loc.shape[:-1]):
        raise ValueError(f"attention_weights must be (N, Lq, M, L, P) = {tuple(loc.shape[:-1])}, "
                         f"got shape {tuple(weights.shape)}")
    for name, t in (("value", value), ("sampling_locations", loc), ("attention_weights", weights)):
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")


def ms_deform_attn(value: torch.Tensor, spatial_shapes, sampling_locations: torch.Tensor,
                   attention_weights: torch.Tensor) -> torch.Tensor:
    """Multi-scale deformable attention, pure PyTorch (``grid_sample`` level by level).

    value: (N, S, M, D), S = sum over levels of H_l * W_l; spatial_shapes: (L, 2) of (H, W);
    sampling_locations: (N, Lq, M, L, P, 2), normalised (x, y); attention_weights:
    (N, Lq, M, L, P), applied as given (the softmax lives in :class:`MSDeformAttn`).
    Returns (N, Lq, M * D).
    """
    shapes = check_spatial_shapes(spatial_shapes, value.shape[1] if value.dim() == 4 else None)
    _check_inputs(value, shapes, sampling_locations, attention_weights)
    n, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    value_levels = value.split([h * w for h, w in shapes], dim=1)  # [(N, H_l W_l, M, D)]
    grids = 2 * sampling_locations - 1  # [0, 1] -> grid_sample's [-1, 1] (align_corners=False)
    sampled = []
    for level, (h, w) in enumerate(shapes):
        # (N, H W, M, D) -> (N M, D, H, W): one image per (sample, head)
        value_map = value_levels[level].permute(0, 2, 3, 1).reshape(n * heads, dim, h, w)
        # (N, Lq, M, P, 2) -> (N M, Lq, P, 2)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(value_map, grid.to(value_map.dtype), mode="bilinear",
                                     padding_mode="zeros", align_corners=False))  # (N M, D, Lq, P)
    sampled = torch.stack(sampled, dim=-2).flatten(-2)  # (N M, D, Lq, L P)
    weights = attention_weights.transpose(1, 2).reshape(n * heads, 1, queries, levels * points)
    out = (sampled * weights.to(sampled.dtype)).sum(-1)  # (N M, D, Lq)
    return out.view(n, heads * dim, queries).transpose(1, 2).contiguous()  # (N, Lq, M D)


def encoder_reference_points(spatial_shapes, device=None) -> torch.Tensor:
    """(S, 2) normalised (x, y) centres of every pixel of every level, levels concatenated.

    In the encoder every pixel is a query whose reference point is its own centre
    ``((j + 0.5) / W, (i + 0.5) / H)``. (The official code also rescales by per-image
    ``valid_ratios`` for padded batches; our batches are never padded, so the ratios are 1.)
    """
    points = []
    for h, w in check_spatial_shapes(spatial_shapes):
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([grid_x.flatten(), grid_y.flatten()], dim=-1))  # (H W, 2)
    return torch.cat(points)


class MSDeformAttn(nn.Module):
    """The attention module: offsets and weights from the query, values projected, output projected.

    forward(query (N, Lq, C), reference_points (N, Lq, L, 2) normalised (x, y) or (N, Lq, L, 4)
    boxes (cx, cy, w, h), value_input (N, S, C), spatial_shapes (L, 2), padding_mask (N, S)
    bool, True = padding) -> (N, Lq, C). With ``record = True`` the last call's sampling
    locations (N, Lq, M, L, P, 2) and attention weights (N, Lq, M, L, P) are kept (detached) in
    ``self.last`` for figures.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if min(n_levels, n_heads, n_points) < 1:
            raise ValueError(f"n_levels, n_heads and n_points must be >= 1, got {n_levels}, {n_heads}, {n_points}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.record = False
        self.last: dict = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official init: offsets start on a radial pattern, attention starts uniform.

        Head ``m`` points in direction ``theta_m = 2 pi m / M``, scaled so the larger of |cos|,
        |sin| is 1; point ``k`` sits ``k + 1`` pixels out along it, on every level.
        """
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([thetas.cos(), thetas.sin()], -1)  # (M, 2)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        radii = torch.arange(1, self.n_points + 1, dtype=torch.float32)  # (P,)
        grid = directions[:, None, None, :] * radii[None, None, :, None]  # (M, 1, P, 2)
        grid = grid.expand(self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, value_input: torch.Tensor,
                spatial_shapes, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        n, queries, channels = query.shape
        shapes = check_spatial_shapes(spatial_shapes, value_input.shape[1])
        if len(shapes) != self.n_levels:
            raise ValueError(f"this module attends over {self.n_levels} levels, got spatial_shapes for {len(shapes)}")
        if channels != self.d_model or value_input.shape[-1] != self.d_model:
            raise ValueError(f"query and value_input need {self.d_model} channels, got {channels} and {value_input.shape[-1]}")
        if reference_points.dim() != 4 or reference_points.shape[:3] != (n, queries, self.n_levels) \
                or reference_points.shape[-1] not in (2, 4):
            raise ValueError(f"reference_points must be (N, Lq, L, 2 or 4) = ({n}, {queries}, {self.n_levels}, 2|4), "
                             f"one point (x, y) or box (cx, cy, w, h) per level, got {tuple(reference_points.shape)} "
                             "(repeat one point per level with points[:, :, None].expand(-1, -1, L, -1))")
        heads, levels, points = self.n_heads, self.n_levels, self.n_points

        value = self.value_proj(value_input)  # (N, S, C)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(n, -1, heads, channels // heads)  # (N, S, M, D)
        offsets = self.sampling_offsets(query).view(n, queries, heads, levels, points, 2)
        # one softmax over all L * P samples of a head, not one per level
        weights = self.attention_weights(query).view(n, queries, heads, levels * points).softmax(-1)
        weights = weights.view(n, queries, heads, levels, points)

        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: divide x by W_l and y by H_l
            normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        else:
            # box references: offsets scaled by half the box size over P (the official two-stage form)
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / points * reference_points[:, :, None, :, None, 2:] * 0.5)
        if self.record:
            self.last = {"sampling_locations": locations.detach(), "attention_weights": weights.detach()}
        out = ms_deform_attn(value, shapes, locations, weights)  # (N, Lq, C)
        return self.output_proj(out)
