"""Label-assignment plots: which priors are positive for which object."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from kit.viz.boxes import CLASS_COLORS, draw_boxes, show_image

LEVEL_MARKERS = ("o", "s", "^", "D", "v")


def draw_assignment(ax, image, points, levels, assigned, gt_boxes, title: str | None = None,
                    quality=None, marker_size: float = 28):
    """Priors over an image: negatives as faint dots, positives coloured by their object.

    points: (N, 2); levels: (N,) level index (marker shape); assigned: (N,) object index or -1;
    gt_boxes: (M, 4), drawn in the colour of their object; quality: optional (N,) in [0, 1]
    that sets the positives' opacity (e.g. the alignment metric).
    """
    points, levels, assigned = (torch.as_tensor(t).detach().cpu() for t in (points, levels, assigned))
    show_image(ax, image, title)
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    ax.scatter(points[:, 0], points[:, 1], s=3, c="white", alpha=0.35, linewidths=0)
    for gt, box in enumerate(torch.as_tensor(gt_boxes).cpu()):
        color = CLASS_COLORS[gt % len(CLASS_COLORS)]
        draw_boxes(ax, box, color=color, linewidth=1.2)
        for level in levels.unique().tolist():
            mask = (assigned == gt) & (levels == level)
            if not mask.any():
                continue
            alpha = None
            if quality is not None:
                q = torch.as_tensor(quality).detach().cpu()[mask].float()
                alpha = (0.35 + 0.65 * q / q.max().clamp(min=1e-12)).numpy()
            ax.scatter(points[mask, 0], points[mask, 1], s=marker_size, color=color, alpha=alpha,
                       marker=LEVEL_MARKERS[level % len(LEVEL_MARKERS)], edgecolors="black", linewidths=0.6)
    ax.set_xlim(xlim)  # scatter autoscaling would otherwise pad the image with white margins
    ax.set_ylim(ylim)


def level_legend(ax, strides=(8, 16, 32)):
    """A legend of the level markers."""
    handles = [plt.Line2D([], [], marker=LEVEL_MARKERS[i], linestyle="", color="gray", markeredgecolor="black",
                          label=f"P{i + 3} (stride {s})") for i, s in enumerate(strides)]
    ax.legend(handles=handles, loc="lower right", fontsize=9, framealpha=0.8)


def score_iou_scatter(ax, scores, ious, label: str, color=None, max_points: int = 3000, seed: int = 0):
    """Scatter of classification score against IoU for a set of priors (subsampled if large)."""
    scores, ious = np.asarray(scores, dtype=float), np.asarray(ious, dtype=float)
    if len(scores) > max_points:
        keep = np.random.default_rng(seed).choice(len(scores), max_points, replace=False)
        scores, ious = scores[keep], ious[keep]
    ax.scatter(ious, scores, s=6, alpha=0.35, color=color, label=label, linewidths=0)
    ax.set_xlabel("IoU of the predicted box with its object")
    ax.set_ylabel("classification score")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
