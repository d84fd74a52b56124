"""Emblem scenes: the class is a small emblem off-centre inside a plain shape; the box needs the edges.

The toy of the decoupling-head page (TSD, P10): classification and localisation want different
parts of an object. Every object is a near-white plain shape (circle, square or triangle, which
says nothing about the class) on the kit's textured background, and carries one small emblem, a
saturated disc of its class's hue crossed by dark stripes at a class-specific angle, at a random
spot at least ``min_offset`` of the half-extent away from the box centre (so not where a
centred RoI's middle bins look). The class is only in the emblem; the box is only in the
shape's edges. The boxes are the tight boxes of the visible shapes, as in
:mod:`kit.data.shapes`, which draws the shapes, their occlusion and the background;
:func:`crowded_config` gives the heavy-overlap split of the NMS study.

Seeded and on the CPU: the shapes come from :func:`kit.data.shapes.generate` (cached), the
emblems from a NumPy generator seeded by the config's seed, placed with SciPy's distance
transform (the emblem disc lies inside the visible shape whenever the shape allows it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from kit.data.dataset import check_config
from kit.data.raster import hsv_to_rgb
from kit.data.shapes import ShapeSceneConfig, ShapeScenes, generate

EMBLEM_NAMES = ("red", "yellow", "green", "cyan", "blue", "magenta")
EMBLEM_HUES = (0.0, 0.15, 0.33, 0.5, 0.64, 0.83)
EMBLEM_RGB = hsv_to_rgb(torch.tensor(EMBLEM_HUES), torch.full((6,), 0.95), torch.full((6,), 0.95)).tolist()
BODY_SHAPES = 3  # circle, square, triangle: SHAPES[:3] of kit.data.shapes


@dataclass(frozen=True)
class EmblemSceneConfig:
    """An emblem-scene set. Sizes in pixels; ``emblem_scale`` is the emblem's radius over the
    object's shorter box side; ``min_offset`` the emblem centre's least distance from the box centre,
    in units of the half-extents (0 anywhere, 0.5 half-way to the edge)."""

    num_images: int
    image_size: int = 128
    num_classes: int = 6
    min_objects: int = 1
    max_objects: int = 4
    min_size: float = 24.0
    max_size: float | None = None  # default 0.8 * image_size
    max_aspect: float = 1.5
    min_visible: float = 0.6
    texture: float = 0.35
    emblem_scale: float = 0.15
    min_emblem_radius: float = 2.5
    min_offset: float = 0.35
    seed: int = 0

    def __post_init__(self):
        check_config(self, [
            (1 <= self.num_classes <= len(EMBLEM_NAMES), f"num_classes must be in 1..{len(EMBLEM_NAMES)}"),
            (0 < self.emblem_scale <= 0.5, "emblem_scale must be in (0, 0.5]"),
            (self.min_emblem_radius >= 1, "min_emblem_radius must be >= 1 pixel"),
            (0 <= self.min_offset < 1, "min_offset must be in [0, 1)"),
        ])
        self.shapes_config()  # the shape generator checks the rest

    def shapes_config(self) -> ShapeSceneConfig:
        return ShapeSceneConfig(num_images=self.num_images, image_size=self.image_size, num_classes=BODY_SHAPES,
                                min_objects=self.min_objects, max_objects=self.max_objects, min_size=self.min_size,
                                max_size=self.max_size, max_aspect=self.max_aspect, min_visible=self.min_visible,
                                texture=self.texture, color_by_class=False, seed=self.seed)


def crowded_config(config: EmblemSceneConfig, num_images: int | None = None, seed: int | None = None) -> EmblemSceneConfig:
    """The same scenes, crowded: 5-9 objects per image, kept while 35 % visible (heavy overlaps)."""
    return replace(config, num_images=num_images or config.num_images, min_objects=5, max_objects=9,
                   min_visible=0.35, seed=config.seed if seed is None else seed)


@dataclass
class EmblemScenes(ShapeScenes):
    """:class:`~kit.data.shapes.ShapeScenes` (``batch``, ``targets``, COCO export) whose labels are the
    emblems'; plus emblem_centres (B, K, 2) (x, y) px, emblem_radii (B, K) px, body_shapes (B, K)
    (0 circle, 1 square, 2 triangle; -1 empty)."""

    config: EmblemSceneConfig
    emblem_centres: torch.Tensor
    emblem_radii: torch.Tensor
    body_shapes: torch.Tensor

    @property
    def class_names(self) -> list[str]:
        return list(EMBLEM_NAMES[: self.config.num_classes])


def place_emblem(mask: np.ndarray, box: np.ndarray, radius: float, min_offset: float, rng) -> tuple[float, float, float]:
    """A centre (x, y) and radius for an emblem inside ``mask`` (H, W) bool: a random pixel whose disc of
    ``radius`` fits, at least ``min_offset`` half-extents from the box centre (relaxed when none is)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    crop = np.pad(mask[y1:y2, x1:x2], 1)  # (h + 2, w + 2), False around, so the edt sees the border
    depth = distance_transform_edt(crop)[1:-1, 1:-1]  # distance to the nearest pixel outside the shape
    ys, xs = np.nonzero(depth > 0)
    cx, cy = (x2 - x1) / 2, (y2 - y1) / 2
    offset = np.hypot((xs + 0.5 - cx) / max(cx, 1), (ys + 0.5 - cy) / max(cy, 1))  # in half-extents
    for fits in (depth[ys, xs] >= radius + 0.5, depth[ys, xs] >= max(depth.max() * 0.9, 1)):
        for far in (offset >= min_offset, np.ones_like(offset, dtype=bool)):
            chosen = np.nonzero(fits & far)[0]
            if len(chosen):
                pick = chosen[rng.integers(len(chosen))]
                r = min(radius, max(float(depth[ys[pick], xs[pick]]) - 0.5, 1.0))
                return x1 + xs[pick] + 0.5, y1 + ys[pick] + 0.5, r
    return x1 + cx, y1 + cy, 1.0  # unreachable for a non-empty mask


def paint_emblem(image: np.ndarray, mask: np.ndarray, centre, radius: float, label: int, num_classes: int) -> None:
    """Paint emblem ``label`` (its hue, stripes at angle label * π / C) into image (3, H, W) float, inside mask."""
    size = mask.shape[-1]
    x0, x1 = max(int(centre[0] - radius) - 1, 0), min(int(centre[0] + radius) + 2, size)  # the disc's square
    y0, y1 = max(int(centre[1] - radius) - 1, 0), min(int(centre[1] + radius) + 2, size)
    dx = np.arange(x0, x1)[None, :] + 0.5 - centre[0]  # (1, w)
    dy = np.arange(y0, y1)[:, None] + 0.5 - centre[1]  # (h, 1)
    disc = (dx * dx + dy * dy <= radius * radius) & mask[y0:y1, x0:x1]  # (h, w)
    angle = label * math.pi / num_classes
    stripes = np.cos(2 * math.pi * (dx * math.cos(angle) + dy * math.sin(angle)) / 3.0) > 0.3  # period 3 px
    shade = np.where(stripes, 0.35, 1.0)  # (h, w): dark stripes
    for c in range(3):
        patch = image[c, y0:y1, x0:x1]
        patch[disc] = (EMBLEM_RGB[label][c] * shade)[disc]


def generate_emblem_scenes(config: EmblemSceneConfig) -> EmblemScenes:
    """Draw the set ``config`` describes (deterministic in ``config.seed``)."""
    shapes = generate(config.shapes_config())  # the bodies, occlusion, background (kit.data.shapes)
    rng = np.random.default_rng(config.seed * 7919 + 17)
    images = shapes.images.numpy().astype(np.float32) / 255  # (B, 3, H, W)
    masks, boxes, present = shapes.masks.numpy(), shapes.boxes.numpy(), shapes.labels.numpy() >= 0
    n, k = present.shape
    labels = np.where(present, rng.integers(0, config.num_classes, (n, k)), -1)
    centres, radii = np.zeros((n, k, 2), np.float32), np.zeros((n, k), np.float32)
    body = hsv_to_rgb(torch.from_numpy(rng.random((n, k)).astype(np.float32)),
                      torch.from_numpy(rng.uniform(0.0, 0.12, (n, k)).astype(np.float32)),
                      torch.from_numpy(rng.uniform(0.82, 1.0, (n, k)).astype(np.float32))).numpy()  # (n, K, 3)
    for i in range(n):
        for slot in np.nonzero(present[i])[0]:
            mask = masks[i, slot]
            x1, y1, x2, y2 = (int(v) for v in boxes[i, slot])
            inside = mask[y1:y2, x1:x2]
            images[i][:, y1:y2, x1:x2][:, inside] = body[i, slot][:, None]  # a plain, near-white shape
            side = float(min(boxes[i, slot, 2] - boxes[i, slot, 0], boxes[i, slot, 3] - boxes[i, slot, 1]))
            radius = max(config.emblem_scale * side, config.min_emblem_radius)
            x, y, r = place_emblem(mask, boxes[i, slot], radius, config.min_offset, rng)
            centres[i, slot], radii[i, slot] = (x, y), r
            paint_emblem(images[i], mask, (x, y), r, int(labels[i, slot]), config.num_classes)
    return EmblemScenes(config, torch.from_numpy(np.round(images * 255).clip(0, 255).astype(np.uint8)),
                        shapes.boxes, torch.from_numpy(labels).long(), shapes.masks, shapes.areas,
                        torch.from_numpy(centres), torch.from_numpy(radii), shapes.labels.clone())
