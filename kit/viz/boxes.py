"""Images with boxes: ground truth, detections, and a grid of examples."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib import patches
from torchvision.ops import box_convert

CLASS_COLORS = plt.get_cmap("tab10").colors


def to_image(image) -> np.ndarray:
    """(3, H, W) tensor (uint8 or float in [0, 1]) or (H, W, 3) array -> (H, W, 3) float array."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.dtype == torch.uint8:
            image = image.float() / 255
        if image.dim() == 3 and image.shape[0] == 3:
            image = image.permute(1, 2, 0)
        image = image.numpy()
    image = np.asarray(image, dtype=float)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (3, H, W) or (H, W, 3), got shape {image.shape}")
    return np.clip(image, 0, 1)


def draw_boxes(ax, boxes, labels=None, scores=None, class_names=None, color=None, linestyle="-",
               linewidth=1.5, fontsize=9):
    """Draw xyxy boxes on ``ax``; colour by label unless ``color`` is given."""
    boxes = box_convert(torch.as_tensor(boxes).detach().cpu().reshape(-1, 4).float(), "xyxy", "xywh")
    for i, (x0, y0, width, height) in enumerate(boxes.tolist()):
        label = None if labels is None else int(labels[i])
        c = color or CLASS_COLORS[(label or 0) % len(CLASS_COLORS)]
        ax.add_patch(patches.Rectangle((x0, y0), width, height, fill=False, edgecolor=c,
                                       linewidth=linewidth, linestyle=linestyle))
        text = []
        if label is not None:
            text.append(class_names[label] if class_names else str(label))
        if scores is not None:
            text.append(f"{float(scores[i]):.2f}")
        if text:
            ax.text(x0, y0 - 1, " ".join(text), color="white", fontsize=fontsize, va="bottom",
                    bbox=dict(facecolor=c, alpha=0.7, pad=0.5, linewidth=0))


def show_image(ax, image, title: str | None = None):
    """Draw an image (see :func:`to_image`) on ``ax`` without ticks, with an optional title.

    Pixel ``i`` covers ``[i, i + 1)`` (the kit's box coordinates), so the image spans ``[0, W] x [0, H]``;
    matplotlib's default extent would put it half a pixel up and left of the boxes drawn on it.
    """
    picture = to_image(image)
    height, width = picture.shape[:2]
    ax.imshow(picture, interpolation="nearest", extent=(0, width, height, 0))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def show_examples(scenes, indices, detections=None, ncols: int = 4, size: float = 2.6,
                  score_threshold: float = 0.3):
    """A grid of dataset images with ground truth (solid) and optional detections (dashed)."""
    indices = list(indices)
    nrows = (len(indices) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (ax, index) in enumerate(zip(axes.flat, indices)):
        show_image(ax, scenes.images[index])
        boxes, labels = scenes.targets(index)
        draw_boxes(ax, boxes, labels, class_names=scenes.class_names)
        if detections is not None:
            det = detections[k]
            keep = det["scores"] >= score_threshold
            draw_boxes(ax, det["boxes"][keep], det["labels"][keep], det["scores"][keep], linestyle="--")
    fig.tight_layout()
    return fig
