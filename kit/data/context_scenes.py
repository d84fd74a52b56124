"""Context scenes: segmentation where an object's class is decided by another object far away.

A toy for spatial attention (the study of arXiv 1904.05873): every image holds one *key*
object, a ring, and a few other shapes. Every shape is painted in one of ``num_colours``
palette colours at random, but the label of **every** object pixel is the *ring's* colour
(``1 + colour``; background 0). A convolution sees the shape under it but not the ring on the
other side of the image, so the labels need long-range context, and the right context is a
particular kind of *key content* (the ring), wherever it is. Colours of the other objects are
random, so the image's colour statistics alone do not give the answer.

Everything is drawn with tensor ops from a seeded generator on the CPU (fast for a few thousand
64 px images) and then moved to any device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kit.data.shapes import _INSIDE_TESTS, _background, _hsv_to_rgb

KEY_SHAPE = "ring"
OTHER_SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
PALETTE_HUES = (0.0, 0.6, 0.15, 0.33, 0.8, 0.5)  # red, blue, yellow, green, purple, cyan
COLOUR_NAMES = ("red", "blue", "yellow", "green", "purple", "cyan")


@dataclass(frozen=True)
class ContextScenesConfig:
    """Parameters of a context-scene set. Sizes are object extents (longer side) in pixels."""

    num_images: int
    image_size: int = 64
    num_colours: int = 4
    min_others: int = 2  # objects besides the key ring
    max_others: int = 4
    min_size: float = 10.0  # the other objects
    max_size: float = 20.0
    key_size: tuple = (14.0, 20.0)  # the key ring's size range
    texture: float = 0.3
    seed: int = 0

    def __post_init__(self):
        checks = [
            (self.num_images >= 1, "num_images must be >= 1"),
            (self.image_size >= 16, "image_size must be >= 16"),
            (2 <= self.num_colours <= len(PALETTE_HUES), f"num_colours must be in 2..{len(PALETTE_HUES)}"),
            (0 <= self.min_others <= self.max_others, "need 0 <= min_others <= max_others"),
            (4 <= self.min_size <= self.max_size <= self.image_size, "need 4 <= min_size <= max_size <= image_size"),
            (len(self.key_size) == 2 and 4 <= self.key_size[0] <= self.key_size[1] <= self.image_size,
             "key_size must be (low, high) with 4 <= low <= high <= image_size"),
            (self.texture >= 0, "texture must be >= 0"),
            (self.seed >= 0, "seed must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"ContextScenesConfig: {message} (got {self})")

    @property
    def num_classes(self) -> int:
        """Segmentation classes: background plus one per palette colour."""
        return 1 + self.num_colours


@dataclass
class ContextScenes:
    """images (B, 3, H, W) uint8; labels (B, H, W) long (0 background, 1 + key colour on objects);
    key_masks (B, H, W) bool, the ring's visible pixels; key_colours (B,) long; key_centres (B, 2) (x, y)."""

    config: ContextScenesConfig
    images: torch.Tensor
    labels: torch.Tensor
    key_masks: torch.Tensor
    key_colours: torch.Tensor
    key_centres: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def class_names(self) -> list[str]:
        return ["background"] + list(COLOUR_NAMES[: self.config.num_colours])

    def batch(self, indices, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Float images in [0, 1] (B, 3, H, W) and label maps (B, H, W), on ``device``."""
        indices = torch.as_tensor(indices, dtype=torch.long, device=self.images.device)
        return self.images[indices].to(device).float().div_(255), self.labels[indices].to(device)

    def to(self, device) -> "ContextScenes":
        fields = ("images", "labels", "key_masks", "key_colours", "key_centres")
        return ContextScenes(self.config, **{k: getattr(self, k).to(device) for k in fields})


def generate_context_scenes(config: ContextScenesConfig) -> ContextScenes:
    """Draw the set ``config`` describes (deterministic in ``config.seed``)."""
    c, size, n = config, config.image_size, config.num_images
    generator = torch.Generator().manual_seed(c.seed * 1_000_003 + 29)
    uniform = lambda low, high, shape: low + (high - low) * torch.rand(shape, generator=generator)
    slots = 1 + c.max_others  # slot 0 is the key ring, drawn last (on top) so it is always visible
    count = torch.randint(c.min_others, c.max_others + 1, (n, 1), generator=generator)
    present = torch.arange(slots)[None] <= count  # (n, slots); slot 0 always present
    shape_ids = torch.randint(0, len(OTHER_SHAPES), (n, slots), generator=generator)
    colours = torch.randint(0, c.num_colours, (n, slots), generator=generator)
    extent = torch.exp(uniform(math.log(c.min_size), math.log(c.max_size), (n, slots)))
    extent[:, 0] = uniform(c.key_size[0], c.key_size[1], (n,))
    rotation = uniform(-math.pi / 8, math.pi / 8, (n, slots))
    centres = uniform(0.0, 1.0, (n, slots, 2)) * (size - extent[..., None]) + extent[..., None] / 2

    grid = torch.arange(size, dtype=torch.float32) + 0.5
    gy, gx = torch.meshgrid(grid, grid, indexing="ij")  # (H, W)
    hue = torch.tensor(PALETTE_HUES)[colours] + uniform(-0.03, 0.03, (n, slots))
    rgb = _hsv_to_rgb(hue % 1, uniform(0.6, 0.9, (n, slots)), uniform(0.65, 0.95, (n, slots)))  # (n, slots, 3)
    image = _background(generator, n, size, c.texture, "cpu")  # (n, 3, H, W)
    labels = torch.zeros((n, size, size), dtype=torch.long)
    key_colours = colours[:, 0]
    for slot in list(range(1, slots)) + [0]:  # the others first, the key ring last
        dx, dy = gx - centres[:, slot, 0, None, None], gy - centres[:, slot, 1, None, None]  # (n, H, W)
        cos, sin = rotation[:, slot, None, None].cos(), rotation[:, slot, None, None].sin()
        half = extent[:, slot, None, None] / 2
        u, v = (dx * cos + dy * sin) / half, (dx * sin - dy * cos) / half
        if slot == 0:
            mask = _INSIDE_TESTS[KEY_SHAPE](u, v)
        else:
            mask = torch.zeros((n, size, size), dtype=torch.bool)
            for index, name in enumerate(OTHER_SHAPES):
                chosen = shape_ids[:, slot] == index
                mask[chosen] = _INSIDE_TESTS[name](u[chosen], v[chosen])
        mask &= present[:, slot, None, None]
        image = torch.where(mask[:, None], rgb[:, slot, :, None, None], image)
        labels = torch.where(mask, 1 + key_colours[:, None, None], labels)
    key_masks = labels.new_zeros(labels.shape, dtype=torch.bool) | mask  # the last mask drawn is the ring's
    shading = 1 + 0.05 * torch.randn((n, 1, size, size), generator=generator)
    images = ((image * shading).clamp(0, 1) * 255).round().to(torch.uint8)
    return ContextScenes(c, images, labels, key_masks, key_colours, centres[:, 0].clone())
