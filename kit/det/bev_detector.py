"""PointPillars-lite: points -> pillars -> BEV grid -> small 2-D CNN -> centre heatmaps (the P25 detector).

PointPillars (Lang et al. 2019, the CBGS paper's baseline) turns a point cloud into a pseudo-image:
every point gets features relative to its pillar (a vertical column over one BEV cell), a shared
MLP lifts them, a max over the points of each pillar gives the cell's feature, and the cells are
scattered to a (C, H, W) grid that ordinary 2-D convolutions read. Deviations: no per-pillar point
cap, a 2-layer MLP without BatchNorm (orig.: linear + BN + ReLU, 64 channels), a 3-stage CNN of
24-48 channels (orig.: 64-256), and anchor-free centre heatmaps (CenterPoint-style) instead of anchors.

Grid convention (:class:`BEVGrid`): the square ``[-extent, extent]²`` metres in ``cells × cells``;
index ``[i, j]`` is the cell of ``x`` (forward) ``i`` and ``y`` (left) ``j``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation

from kit.det.grouped_heads import GroupedHeads
from kit.nn.backbone import conv_bn_relu


@dataclass(frozen=True)
class BEVGrid:
    """``cells × cells`` BEV cells over ``[-extent, extent]²`` metres."""

    extent: float
    cells: int

    def __post_init__(self):
        if not (isinstance(self.cells, int) and self.cells >= 4 and self.cells % 4 == 0):
            raise ValueError(f"cells must be an int >= 4 divisible by 4 (two stride-2 stages), got {self.cells!r}")
        if not (float(self.extent) > 0 and float(self.extent) < float("inf")):
            raise ValueError(f"extent must be a finite number of metres > 0, got {self.extent!r}")

    @property
    def cell(self) -> float:
        """Cell size in metres."""
        return 2 * self.extent / self.cells

    def cell_coordinates(self, xy: torch.Tensor) -> torch.Tensor:
        """(..., 2) metres -> (..., 2) continuous cell coordinates (cell i spans [i, i + 1))."""
        return (xy + self.extent) / self.cell


def check_points(points: torch.Tensor, batch_index: torch.Tensor, batch_size: int) -> None:
    if not isinstance(points, torch.Tensor) or points.dim() != 2 or points.shape[1] != 4:
        raise ValueError(f"points must be a (P, 4) tensor (x, y, z, intensity), got "
                         f"{tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__}")
    if not points.is_floating_point():
        raise TypeError(f"points must be float, got {points.dtype}")
    if not bool(torch.isfinite(points).all()):
        raise ValueError("points must be finite (found NaN or inf)")
    if batch_index.shape != points.shape[:1] or batch_index.dtype != torch.long:
        raise ValueError(f"batch_index must be (P,) long, the scene of each point, got {tuple(batch_index.shape)} "
                         f"{batch_index.dtype}")
    if len(batch_index) and (int(batch_index.min()) < 0 or int(batch_index.max()) >= batch_size):
        raise ValueError(f"batch_index must be in [0, {batch_size}), got values in "
                         f"[{int(batch_index.min())}, {int(batch_index.max())}]")


class PillarEncoder(nn.Module):
    """Points (P, 4) of a batch -> BEV pseudo-image (B, channels + 1, H, W): max-pooled MLP features + log count."""

    def __init__(self, grid: BEVGrid, channels: int = 24):
        super().__init__()
        self.grid, self.channels = grid, channels
        self.mlp = nn.Sequential(nn.Linear(6, channels), nn.ReLU(), nn.Linear(channels, channels), nn.ReLU())

    def forward(self, points: torch.Tensor, batch_index: torch.Tensor, batch_size: int) -> torch.Tensor:
        check_points(points, batch_index, batch_size)
        cells = self.grid.cells
        coords = self.grid.cell_coordinates(points[:, :2])  # (P, 2)
        keep = ((coords >= 0) & (coords < cells)).all(1)
        points, coords, batch_index = points[keep], coords[keep], batch_index[keep]
        cell = coords.floor().long()  # (P, 2): i, j
        features = torch.cat([coords - cell - 0.5,  # position inside the pillar, in [-0.5, 0.5)
                              points[:, 2:3] / 2, points[:, 3:4],  # height, intensity
                              points[:, :2] / self.grid.extent], 1)  # where the pillar is, in [-1, 1]; (P, 6)
        lifted = self.mlp(features)  # (P, C)
        flat = (batch_index * cells + cell[:, 0]) * cells + cell[:, 1]  # (P,) pillar id
        pillars = lifted.new_zeros(batch_size * cells * cells, self.channels)
        pillars = pillars.scatter_reduce(0, flat[:, None].expand_as(lifted), lifted, "amax", include_self=False)
        counts = torch.bincount(flat, minlength=batch_size * cells * cells).to(lifted.dtype)
        bev = torch.cat([pillars, counts.log1p()[:, None]], 1)  # (B*H*W, C + 1); empty pillars are 0
        return bev.view(batch_size, cells, cells, self.channels + 1).permute(0, 3, 1, 2)


class BEVBackbone(nn.Module):
    """Three stages at strides 1, 2, 4, each upsampled back to stride 1 and concatenated (PointPillars' RPN)."""

    def __init__(self, in_channels: int, widths=(24, 48, 48), out_channels: int = 48):
        super().__init__()
        w1, w2, w3 = widths
        self.stage1 = nn.Sequential(conv_bn_relu(in_channels, w1), conv_bn_relu(w1, w1))
        self.stage2 = nn.Sequential(conv_bn_relu(w1, w2, stride=2), conv_bn_relu(w2, w2))
        self.stage3 = nn.Sequential(conv_bn_relu(w2, w3, stride=2), conv_bn_relu(w3, w3))
        self.up2 = nn.ConvTranspose2d(w2, w1, 2, stride=2)
        self.up3 = nn.ConvTranspose2d(w3, w1, 4, stride=4)
        self.fuse = Conv2dNormActivation(3 * w1, out_channels, 3)
        self.out_channels = out_channels

    def forward(self, bev: torch.Tensor) -> torch.Tensor:
        s1 = self.stage1(bev)  # (B, w1, H, W)
        s2 = self.stage2(s1)  # (B, w2, H/2, W/2)
        s3 = self.stage3(s2)  # (B, w3, H/4, W/4)
        return self.fuse(torch.cat([s1, self.up2(s2), self.up3(s3)], 1))  # (B, out, H, W)


class BEVDetector(nn.Module):
    """Pillars -> backbone -> :class:`~kit.det.grouped_heads.GroupedHeads` (``groups=None``: one shared head).

    forward(points (P, 4), batch_index (P,), batch_size) -> heat logits (B, C, H, W), box maps (B, G, 6, H, W).
    """

    def __init__(self, grid: BEVGrid, num_classes: int, groups=None, pillar_channels: int = 24,
                 widths=(24, 48, 48), features: int = 48):
        super().__init__()
        self.grid = grid
        self.pillars = PillarEncoder(grid, pillar_channels)
        self.backbone = BEVBackbone(pillar_channels + 1, widths, features)
        self.heads = GroupedHeads(features, num_classes, groups)

    @property
    def groups(self):
        return self.heads.groups

    def forward(self, points: torch.Tensor, batch_index: torch.Tensor, batch_size: int):
        return self.heads(self.backbone(self.pillars(points, batch_index, batch_size)))
