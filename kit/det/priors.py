"""Point priors: one location per feature-map cell on every FPN level.

A level with stride ``s`` and size (h, w) has points at ``((j + offset) * s, (i + offset) * s)``.
We use ``offset = 0.5`` (the cell centre, as mmdetection's ``MlvlPointGenerator`` default);
mmdetection's ATSS/TOOD anchor generator uses offset 0 (the cell's top-left corner). The
difference only shifts every prior by half a stride.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Priors:
    """All priors of an image, levels concatenated.

    points: (N, 2) xy pixels; strides: (N,) stride of each point's level; levels: (N,) level
    index; sizes: the (h, w) of every level, in order.
    """

    points: torch.Tensor
    strides: torch.Tensor
    levels: torch.Tensor
    sizes: list[tuple[int, int]]

    @property
    def num_per_level(self) -> list[int]:
        return [h * w for h, w in self.sizes]

    def anchor_boxes(self, scale: float) -> torch.Tensor:
        """Square boxes of side ``scale * stride`` centred on the points (N, 4), as ATSS uses."""
        half = (scale * self.strides / 2)[:, None]
        return torch.cat([self.points - half, self.points + half], dim=1)

    def split(self, values: torch.Tensor, dim: int = 0) -> list[torch.Tensor]:
        """Split a tensor over priors back into levels."""
        return list(values.split(self.num_per_level, dim=dim))

    def level_maps(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Per-prior values (N, ...) as one map per level [(h_l, w_l, ...)], row-major as the priors."""
        return [level.view(h, w, *values.shape[1:]) for level, (h, w) in zip(self.split(values), self.sizes)]


def point_priors(sizes: list[tuple[int, int]], strides: list[int], offset: float = 0.5,
                 device: torch.device | str | None = None) -> Priors:
    """Point priors for feature maps of the given (h, w) sizes and strides."""
    if len(sizes) != len(strides):
        raise ValueError(f"need one stride per level: {len(sizes)} sizes, {len(strides)} strides")
    if not 0 <= offset < 1:
        raise ValueError(f"offset must be in [0, 1), got {offset}")
    points, level_strides, levels = [], [], []
    for level, ((h, w), stride) in enumerate(zip(sizes, strides)):
        ys = (torch.arange(h, device=device, dtype=torch.float32) + offset) * stride
        xs = (torch.arange(w, device=device, dtype=torch.float32) + offset) * stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([grid_x.flatten(), grid_y.flatten()], dim=1))  # row-major
        level_strides.append(torch.full((h * w,), float(stride), device=device))
        levels.append(torch.full((h * w,), level, dtype=torch.long, device=device))
    return Priors(torch.cat(points), torch.cat(level_strides), torch.cat(levels), [tuple(s) for s in sizes])
