"""Receptive-field figures: the ERF over the image, the theoretical RF, sampling points, kernel space.

* :func:`draw_erf` / :func:`erf_figure`: the effective receptive field (from
  :func:`kit.analysis.erf.effective_receptive_field`) as a heatmap over the image, the theoretical
  RF box outlined (dashed), the unit's position marked, and, for deformable models, the
  effective sampling points (:func:`kit.analysis.sampling_points.stacked_sampling_points`) on top,
  their opacity the product of the DCNv2 masks along each path.
* :func:`draw_kernel_space`: Deformable Kernels' view: the scope kernel ``W`` (S x S) with the
  rigid tap positions (rings) and where the taps actually read it (dots, arrows).

Coordinates: images span ``[0, W] x [0, H]`` with pixel ``i`` covering ``[i, i + 1)``; points are
``(x, y)``; sampling points given as pixel indices are drawn at pixel centres (``+ 0.5``). Kernel
space (:func:`draw_kernel_space`) is a weight array, so its taps are ``(row, col)`` indices.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import patches

from kit.viz.boxes import to_image
from kit.viz.maps import as_array, image_axes


def dimmed_grey(image: np.ndarray, low: float = 0.25, high: float = 0.6) -> np.ndarray:
    """An (H, W, 3) image in [0, 1] as its luminance (H, W) squeezed into [low, high]: a quiet background."""
    luminance = np.asarray(image, dtype=float) @ np.array([0.299, 0.587, 0.114])
    return low + (high - low) * np.clip(luminance, 0, 1)


def draw_erf(ax, erf, image=None, rf_box=None, points=None, point_weights=None, centre=None, title=None,
             cmap: str = "inferno", alpha: float = 0.7, point_color: str = "cyan"):
    """One ERF panel. erf (H, W); image (3, H, W) or None; rf_box (x0, y0, x1, y1) continuous;
    points (N, 2) as (x, y) pixel indices (as :func:`kit.analysis.sampling_points.stacked_sampling_points`
    returns them) with optional weights (N,) in [0, 1]; centre (x, y) continuous.

    The heatmap is the ERF divided by its 99.5th percentile and clipped at 1 (so panels compare
    shapes, not scales, and one hot pixel does not wash the rest out); over an image its opacity
    grows with the ERF, so the image shows where the ERF is weak. The image is drawn grey and
    dimmed (:func:`dimmed_grey`) so that the ERF stands out from a textured background.
    """
    values = as_array(erf)
    h, w = values.shape
    extent = (0, w, h, 0)
    if image is not None:  # the image as a dimmed grey, so the ERF's colours stand out from any texture
        ax.imshow(dimmed_grey(to_image(image)), extent=extent, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    scale = max(np.percentile(values, 99.5), 1e-12)  # robust to a few hot pixels
    shown = np.clip(values / scale, 0, 1)
    if image is not None:  # opacity follows the ERF, so the image shows where the ERF is weak
        colours = plt.get_cmap(cmap)(shown)
        colours[..., 3] = alpha * shown ** 0.4
        ax.imshow(colours, extent=extent, interpolation="nearest")
    heat = ax.imshow(shown, extent=extent, cmap=cmap, vmin=0, vmax=1, interpolation="nearest",
                     alpha=0.0 if image is not None else 1.0)
    if rf_box is not None:
        x0, y0, x1, y1 = [float(v) for v in rf_box]
        ax.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white",
                                       linestyle="--", linewidth=1.2))
    if points is not None:
        pts = as_array(points).reshape(-1, 2)
        weights = np.ones(len(pts)) if point_weights is None else np.clip(as_array(point_weights).reshape(-1), 0, 1)
        colours = np.zeros((len(pts), 4))
        colours[:] = plt.matplotlib.colors.to_rgba(point_color)
        colours[:, 3] = 0.15 + 0.85 * weights / max(weights.max(), 1e-12)
        size = max(5.0, 40.0 / np.sqrt(len(pts)))  # few points drawn larger than many
        ax.scatter(pts[:, 0] + 0.5, pts[:, 1] + 0.5, s=size, c=colours, edgecolors="black", linewidths=0.3)
    if centre is not None:
        ax.plot([float(centre[0])], [float(centre[1])], marker="+", color="lime", markersize=9, mew=2)
    image_axes(ax, w, h, title)
    return heat


def erf_figure(panels: dict, image=None, centre=None, size: float = 2.6, suptitle: str | None = None,
               columns: int | None = None):
    """A row (or grid) of ERF panels. panels: name -> dict of :func:`draw_erf` keywords
    (``erf`` required; ``rf_box``, ``points``, ``point_weights``, ``image``, ``centre`` optional)."""
    names = list(panels)
    columns = columns or len(names)
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(size * columns, size * rows + 0.4), squeeze=False)
    for ax, name in zip(axes.flat, names):
        options = dict(panels[name])
        options.setdefault("image", image)
        options.setdefault("centre", centre)
        draw_erf(ax, title=name, **options)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def draw_kernel_space(ax, scope_kernel, sampled, rigid=None, title=None, cmap: str = "coolwarm"):
    """Deformable Kernels in kernel space: the scope kernel (S, S) with its sampled tap positions.

    sampled: (T, 2) ``(row, col)`` scope pixel coordinates the taps read; rigid: (T, 2) where they
    sit before their offsets (default: none drawn). Scope pixel ``(r, c)`` is drawn centred at
    ``(r, c)``; a tap outside ``(-1, S)`` reads zero.
    """
    kernel = as_array(scope_kernel)
    s_h, s_w = kernel.shape
    bound = max(abs(kernel).max(), 1e-12)
    ax.imshow(kernel, cmap=cmap, vmin=-bound, vmax=bound, extent=(-0.5, s_w - 0.5, s_h - 0.5, -0.5))
    taps = as_array(sampled).reshape(-1, 2)
    if rigid is not None:
        base = as_array(rigid).reshape(-1, 2)
        ax.scatter(base[:, 1], base[:, 0], s=40, facecolors="none", edgecolors="black", linewidths=1.0)
        for (r0, c0), (r1, c1) in zip(base, taps):
            ax.annotate("", xy=(c1, r1), xytext=(c0, r0), arrowprops=dict(arrowstyle="->", lw=0.8, color="black"))
    ax.scatter(taps[:, 1], taps[:, 0], s=18, c="black")
    ax.set_xlim(-1.2, s_w + 0.2)
    ax.set_ylim(s_h + 0.2, -1.2)
    ax.set_xticks(range(s_w))
    ax.set_yticks(range(s_h))
    ax.tick_params(labelsize=9)
    if title:
        ax.set_title(title, fontsize=9)
    return ax
