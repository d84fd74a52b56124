"""Drawing attention: a map of weights over an image, a query marker, chosen tokens, sampling points.

Attention weights live on a coarse grid (tokens or feature-map cells); :func:`draw_attention`
stretches that grid over the whole image (each cell covers ``image_size / grid`` pixels) and
blends it with the image, so a reader sees *where* in the image the weight goes.
"""
from __future__ import annotations

import numpy as np

from kit.viz.boxes import to_image
from kit.viz.maps import as_array, image_axes


def draw_attention(ax, image, weights, title: str | None = None, query=None, cmap: str = "inferno",
                   alpha: float = 0.65, vmax: float | None = None, colorbar: bool = False,
                   cell: float | None = None, first_centre: float | None = None):
    """Blend a (h, w) map of weights over ``image`` (3, H, W); ``query`` = (x, y) in pixels is marked.

    The map is scaled to [0, its max] (or [0, vmax]) and drawn cell by cell (no smoothing), so
    the grid of tokens stays visible. By default the cells tile the image (ViT patches); for a
    feature map pass ``cell`` (pixels between cell centres, e.g. the stride) and ``first_centre``
    (the pixel coordinate of cell 0's centre) to place each cell where it really is.
    """
    weights = as_array(weights)
    if weights.ndim != 2:
        raise ValueError(f"weights must be a (h, w) map, got shape {weights.shape}")
    picture = to_image(image)
    height, width = picture.shape[:2]
    ax.imshow(picture, extent=(0, width, height, 0))
    if cell is None:
        extent = (0, width, height, 0)
    else:
        start = (first_centre if first_centre is not None else cell / 2) - cell / 2
        extent = (start, start + cell * weights.shape[1], start + cell * weights.shape[0], start)
    top = vmax if vmax is not None else max(float(weights.max()), 1e-12)
    shown = ax.imshow(weights, extent=extent, cmap=cmap, alpha=alpha, vmin=0, vmax=top, interpolation="nearest")
    if query is not None:
        ax.scatter([query[0]], [query[1]], s=60, marker="x", color="cyan", linewidths=2)
    image_axes(ax, width, height, title)
    if colorbar:
        ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    return shown


def draw_tokens(ax, tokens, grid: tuple[int, int], image_size: int, color: str = "lime", label: str | None = None):
    """Outline chosen patch tokens (0-based patch indices, row-major on ``grid``) on an image axis."""
    from matplotlib.patches import Rectangle

    rows, cols = grid
    cell_h, cell_w = image_size / rows, image_size / cols
    for number, token in enumerate(np.asarray(as_array(tokens), dtype=int).ravel()):
        if not 0 <= token < rows * cols:
            raise ValueError(f"token {token} is outside the {rows}x{cols} grid")
        r, c = divmod(int(token), cols)
        ax.add_patch(Rectangle((c * cell_w, r * cell_h), cell_w, cell_h, fill=False, edgecolor=color,
                               linewidth=1.5, label=label if number == 0 else None))


def draw_points(ax, points, color: str = "cyan", size: float = 18, label: str | None = None):
    """Scatter (P, 2) points given as (x, y) pixels, e.g. deformable sampling locations."""
    points = as_array(points).reshape(-1, 2)
    ax.scatter(points[:, 0], points[:, 1], s=size, color=color, edgecolors="black", linewidths=0.5, label=label)
