"""Fine-grained shapes: classes that differ only by a small local detail (for DCAL, arXiv 2205.02151).

Fine-grained recognition (bird species, car models) separates classes that look alike except
for a few small parts. This generator makes a toy version: every image holds one object, a
*base* (a shape with its own muted colour) carrying a small *marker* dot whose colour is the
*detail*. The class is ``base * num_details + detail``, so classes with the same base differ
only by a dot a few pixels wide. Background dots in the same marker colours (distractors)
make the task about the dot *on the object*, not about which colours appear in the image.
Objects are placed, scaled, stretched and slightly rotated at random on a textured background.

``generate_finegrained(config)`` draws a balanced, shuffled set; two configs that differ only in
``seed`` give a train and a test split. Everything is tensor ops, seeded, on the CPU (a few
hundred 32 px images take well under a second), then moved to any device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kit.data.dataset import GeneratedDataset, check_config
from kit.data.raster import background, discs, hsv_to_rgb, masks_by_shape, object_frame, pixel_centres, uniform

BASE_SHAPES = ("circle", "square", "triangle", "diamond", "half-disc", "star", "ring", "cross")
# Marker colours (RGB): saturated or black/white, so they stand out from the muted bases.
MARKER_COLOURS = torch.tensor([
    [1.0, 0.1, 0.1],  # red
    [0.1, 0.3, 1.0],  # blue
    [1.0, 0.95, 0.1],  # yellow
    [0.05, 0.05, 0.05],  # black
    [1.0, 1.0, 1.0],  # white
    [0.1, 0.9, 0.2],  # green
    [1.0, 0.2, 1.0],  # magenta
    [0.1, 0.95, 0.95],  # cyan
])
MARKER_NAMES = ("red", "blue", "yellow", "black", "white", "green", "magenta", "cyan")


@dataclass(frozen=True)
class FineShapesConfig:
    """Parameters of a fine-grained shapes set. Sizes are in pixels unless a fraction is said."""

    images_per_class: int
    num_bases: int = 4
    num_details: int = 4
    image_size: int = 32
    min_extent: float = 0.45  # object's longer side, as a fraction of the image size
    max_extent: float = 0.75
    marker_radius: float = 2.2  # a dot of about 5 x 5 pixels
    max_distractors: int = 2  # background dots in marker colours, 0..max per image
    texture: float = 0.35
    seed: int = 0

    def __post_init__(self):
        check_config(self, [
            (self.images_per_class >= 1, "images_per_class must be >= 1"),
            (1 <= self.num_bases <= len(BASE_SHAPES), f"num_bases must be in 1..{len(BASE_SHAPES)}"),
            (1 <= self.num_details <= len(MARKER_COLOURS), f"num_details must be in 1..{len(MARKER_COLOURS)}"),
            (self.image_size >= 16, "image_size must be >= 16"),
            (0.1 <= self.min_extent <= self.max_extent <= 1.0, "need 0.1 <= min_extent <= max_extent <= 1"),
            (0.5 <= self.marker_radius <= self.image_size / 8, "marker_radius must be in [0.5, image_size/8]"),
            (self.max_distractors >= 0, "max_distractors must be >= 0"),
            (self.texture >= 0, "texture must be >= 0"),
            (self.seed >= 0, "seed must be >= 0"),
        ])

    @property
    def num_classes(self) -> int:
        return self.num_bases * self.num_details


@dataclass
class FineShapes(GeneratedDataset):
    """A generated set. images (B, 3, H, W) uint8; labels, bases, details (B,) long;
    markers (B, 2) the marker's centre (x, y) in pixels; object_masks (B, H, W) bool.
    ``batch`` returns images (B, 3, H, W) and labels (B,)."""

    config: FineShapesConfig
    images: torch.Tensor
    labels: torch.Tensor
    bases: torch.Tensor
    details: torch.Tensor
    markers: torch.Tensor
    object_masks: torch.Tensor

    @property
    def class_names(self) -> list[str]:
        c = self.config
        return [f"{BASE_SHAPES[b]}+{MARKER_NAMES[d]}" for b in range(c.num_bases) for d in range(c.num_details)]


def _random_pixel(allowed: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One uniformly random allowed pixel per image: allowed (B, H, W) bool -> (B, 2) (x, y) centres.

    Images with no allowed pixel fall back to any pixel (callers make that rare).
    """
    b, h, w = allowed.shape
    scores = torch.rand((b, h, w), generator=generator) + allowed.float() * 2  # allowed pixels win
    flat = scores.view(b, -1).argmax(dim=1)
    return torch.stack([flat % w, flat // w], dim=1).float() + 0.5


def _erode(masks: torch.Tensor, reach: int) -> torch.Tensor:
    """Pixels (B, H, W) whose whole (2 reach + 1)-square neighbourhood is in ``masks``."""
    return -F.max_pool2d(-masks[:, None].float(), 2 * reach + 1, stride=1, padding=reach)[:, 0] > 0.5


def _dilate(masks: torch.Tensor, reach: int) -> torch.Tensor:
    """Pixels (B, H, W) with a pixel of ``masks`` in their (2 reach + 1)-square neighbourhood."""
    return F.max_pool2d(masks[:, None].float(), 2 * reach + 1, stride=1, padding=reach)[:, 0] > 0.5


def generate_finegrained(config: FineShapesConfig) -> FineShapes:
    """Draw the set ``config`` describes (deterministic in ``config.seed``)."""
    c = config
    generator = torch.Generator().manual_seed(c.seed * 1_000_003 + 17)
    count = c.num_classes * c.images_per_class
    labels = torch.arange(c.num_classes).repeat_interleave(c.images_per_class)
    labels = labels[torch.randperm(count, generator=generator)]
    bases, details = labels // c.num_details, labels % c.num_details
    masks = _draw_objects(c, bases, generator)  # (B, H, W)

    # The marker sits well inside the object: its centre is a pixel whose whole disc is on the object.
    # A disc of radius r covers pixel offsets up to floor(r), so a (2 floor(r) + 1) square erosion suffices.
    reach = int(c.marker_radius)
    inner = _erode(masks, reach)
    inner = torch.where(inner.flatten(1).any(1)[:, None, None], inner, masks)  # thin objects: any object pixel
    markers = _random_pixel(inner, generator)  # (B, 2)
    marker_masks = discs(markers, c.marker_radius, c.image_size) & masks

    # Colours: each base has a muted hue of its own (+ jitter); markers use the fixed palette.
    base_hue = (bases.float() / c.num_bases + 0.08 + uniform(generator, -0.03, 0.03, (count,))) % 1
    base_rgb = hsv_to_rgb(base_hue, uniform(generator, 0.3, 0.5, (count,)),
                          uniform(generator, 0.45, 0.7, (count,)))  # (B, 3)
    image = background(generator, count, c.image_size, c.texture)  # (B, 3, H, W)
    shading = 1 + 0.06 * torch.randn((count, 1, c.image_size, c.image_size), generator=generator)
    image = torch.where(masks[:, None], base_rgb[:, :, None, None] * shading, image)
    palette = MARKER_COLOURS[: c.num_details]
    image = torch.where(marker_masks[:, None], palette[details][:, :, None, None], image)
    image = _add_distractors(image, _dilate(masks, reach + 1), c, palette, generator)
    images = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    return FineShapes(c, images, labels, bases, details, markers, masks)


def _draw_objects(c: FineShapesConfig, bases: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Object masks (B, H, W): each image's base shape, sized, stretched, slightly rotated, placed
    with most of it inside the image."""
    count, size = len(bases), c.image_size
    extent = uniform(generator, c.min_extent, c.max_extent, (count,)) * size  # longer side, pixels
    aspect = torch.exp(uniform(generator, -math.log(1.3), math.log(1.3), (count,)))
    half_w, half_h = extent / 2 * aspect.clamp(max=1), extent / 2 / aspect.clamp(min=1)
    rotation = uniform(generator, -math.pi / 8, math.pi / 8, (count,))
    centre = torch.stack([uniform(generator, 0.35 * extent, size - 0.35 * extent, (count,)) for _ in range(2)],
                         dim=1)  # (B, 2)
    gy, gx = pixel_centres(size)  # (H, W)
    per_image = lambda t: t[:, None, None]  # (B,) -> (B, 1, 1)
    u, v = object_frame(gx, gy, per_image(centre[:, 0]), per_image(centre[:, 1]), per_image(half_w),
                        per_image(half_h), per_image(rotation))  # (B, H, W)
    return masks_by_shape(BASE_SHAPES[: c.num_bases], bases, u, v)


def _add_distractors(image, near_object, c: FineShapesConfig, palette, generator) -> torch.Tensor:
    """Paint 0 .. max_distractors dots per image in marker colours, off the object and its border
    (``near_object`` (B, H, W)); image (B, 3, H, W) float."""
    count = image.shape[0]
    num_distractors = torch.randint(0, c.max_distractors + 1, (count,), generator=generator)
    for slot in range(c.max_distractors):
        where = _random_pixel(~near_object, generator)  # (B, 2)
        colour = palette[torch.randint(0, c.num_details, (count,), generator=generator)]  # (B, 3)
        dots = discs(where, c.marker_radius, c.image_size) & ~near_object & (slot < num_distractors)[:, None, None]
        image = torch.where(dots[:, None], colour[:, :, None, None], image)
    return image
