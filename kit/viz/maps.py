"""Maps over an image: one panel per FPN level, optionally over the image, with a box outlined.

Also the two helpers every map-over-an-image figure of the kit uses (:mod:`kit.viz.attention`,
:mod:`kit.viz.erf`): :func:`as_array` (a tensor or array as a float NumPy array) and
:func:`image_axes` (the image's extent, no ticks, a small title).
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from kit.viz.boxes import draw_boxes, to_image


def as_array(values) -> np.ndarray:
    """A tensor (any device, detached) or array-like as a float64 NumPy array."""
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=float)


def image_axes(ax, width: float, height: float, title: str | None = None) -> None:
    """Show exactly the image ``[0, width] x [0, height]`` (y down), without ticks, titled small."""
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def draw_level_map(ax, values, image_size: int, image=None, box=None, cmap="viridis", vmin=None, vmax=None,
                   alpha: float = 0.75, title: str | None = None):
    """One level's (h, w) map stretched over the image extent; returns the image artist."""
    if image is not None:
        ax.imshow(to_image(image), extent=(0, image_size, image_size, 0))
    artist = ax.imshow(as_array(values), extent=(0, image_size, image_size, 0), cmap=cmap, vmin=vmin,
                       vmax=vmax, alpha=alpha if image is not None else 1.0, interpolation="nearest")
    if box is not None:
        draw_boxes(ax, box, color="white", linewidth=1.2)
    image_axes(ax, image_size, image_size, title)
    return artist


def level_grid(rows: dict, image_size: int, image=None, box=None, strides=(8, 16, 32), shared_scale: bool = True,
               cmap="viridis", size: float = 2.2, suptitle: str | None = None):
    """A grid of maps: one row per entry of ``rows`` (name -> list of (h, w) maps per level).

    With ``shared_scale`` every row uses one colour scale across its levels (so levels compare).
    """
    names = list(rows)
    num_levels = len(rows[names[0]])
    fig, axes = plt.subplots(len(names), num_levels, figsize=(size * num_levels + 0.8, size * len(names)),
                             squeeze=False)
    for r, name in enumerate(names):
        maps = [as_array(m) for m in rows[name]]
        vmax = max(float(m.max()) for m in maps) if shared_scale else None
        vmin = min(float(m.min()) for m in maps) if shared_scale else None
        for level, values in enumerate(maps):
            title = f"{name} · P{level + 3} (stride {strides[level]})"
            artist = draw_level_map(axes[r, level], values, image_size, image, box, cmap, vmin, vmax, title=title)
        fig.colorbar(artist, ax=axes[r].tolist(), fraction=0.02, pad=0.01)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig
