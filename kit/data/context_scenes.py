"""Context scenes: segmentation where an object's class is decided by another object far away.

A toy for spatial attention (the study of arXiv 1904.05873): every image holds one *key*
object, a ring, and a few other shapes. Every shape is painted in one of ``num_colours``
palette colours at random, but the label of **every** object pixel is the *ring's* colour
(``1 + colour``; background 0). A convolution sees the shape under it but not the ring on the
other side of the image, so the labels need long-range context, and the right context is a
particular kind of *key content* (the ring), wherever it is. Colours of the other objects are
random, so the image's colour statistics alone do not give the answer.

Everything is drawn with tensor ops (:mod:`kit.data.raster`) from a seeded generator on the CPU
(fast for a few thousand 64 px images) and then moved to any device. The slot sampling and
painting here (:func:`sample_slots`, :func:`paint_slots`) also draw :mod:`kit.data.two_ring_scenes`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kit.data.dataset import GeneratedDataset, check_config
from kit.data.raster import INSIDE_TESTS, background, hsv_to_rgb, masks_by_shape, object_frame, pixel_centres, uniform

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
        check_config(self, [
            (self.num_images >= 1, "num_images must be >= 1"),
            (self.image_size >= 16, "image_size must be >= 16"),
            (2 <= self.num_colours <= len(PALETTE_HUES), f"num_colours must be in 2..{len(PALETTE_HUES)}"),
            (0 <= self.min_others <= self.max_others, "need 0 <= min_others <= max_others"),
            (4 <= self.min_size <= self.max_size <= self.image_size, "need 4 <= min_size <= max_size <= image_size"),
            (len(self.key_size) == 2 and 4 <= self.key_size[0] <= self.key_size[1] <= self.image_size,
             "key_size must be (low, high) with 4 <= low <= high <= image_size"),
            (self.texture >= 0, "texture must be >= 0"),
            (self.seed >= 0, "seed must be >= 0"),
        ])

    @property
    def num_classes(self) -> int:
        """Segmentation classes: background plus one per palette colour."""
        return 1 + self.num_colours


@dataclass
class ContextScenes(GeneratedDataset):
    """images (B, 3, H, W) uint8; labels (B, H, W) long (0 background, 1 + key colour on objects);
    key_masks (B, H, W) bool, the ring's visible pixels; key_colours (B,) long; key_centres (B, 2) (x, y).
    ``batch`` returns images (B, 3, H, W) and label maps (B, H, W)."""

    config: ContextScenesConfig
    images: torch.Tensor
    labels: torch.Tensor
    key_masks: torch.Tensor
    key_colours: torch.Tensor
    key_centres: torch.Tensor

    @property
    def class_names(self) -> list[str]:
        return ["background"] + list(COLOUR_NAMES[: self.config.num_colours])


# --------------------------------------------------------------------------- drawing (shared with two_ring_scenes)


@dataclass
class Slots:
    """Per-slot objects of a ring scene, (n, S) each; slots ``0 .. num_keys - 1`` are the key rings.

    present bool; shape_ids long (into OTHER_SHAPES; unused for rings); colours long (palette
    index); extent (longer side, pixels); rotation (radians); centres (n, S, 2) (x, y) pixels.
    """

    num_keys: int
    present: torch.Tensor
    shape_ids: torch.Tensor
    colours: torch.Tensor
    extent: torch.Tensor
    rotation: torch.Tensor
    centres: torch.Tensor


def sample_slots(config, num_keys: int, generator: torch.Generator) -> Slots:
    """Draw the objects of ``config.num_images`` scenes: ``num_keys`` (1 or 2) rings plus
    ``min_others .. max_others`` other shapes. With two rings the second gets another colour."""
    if num_keys not in (1, 2):
        raise ValueError(f"sample_slots draws 1 or 2 key rings, got num_keys={num_keys}")
    c, n = config, config.num_images
    slots = num_keys + c.max_others
    count = torch.randint(c.min_others, c.max_others + 1, (n, 1), generator=generator)
    present = torch.arange(slots)[None] < num_keys + count  # (n, slots); the rings always present
    shape_ids = torch.randint(0, len(OTHER_SHAPES), (n, slots), generator=generator)
    colours = torch.randint(0, c.num_colours, (n, slots), generator=generator)
    if num_keys == 2:  # the second ring's colour: the first's shifted by 1 .. num_colours - 1
        colours[:, 1] = (colours[:, 0] + torch.randint(1, c.num_colours, (n,), generator=generator)) % c.num_colours
    extent = torch.exp(uniform(generator, math.log(c.min_size), math.log(c.max_size), (n, slots)))
    extent[:, :num_keys] = uniform(generator, c.key_size[0], c.key_size[1], (n, num_keys))
    rotation = uniform(generator, -math.pi / 8, math.pi / 8, (n, slots))
    centres = uniform(generator, 0.0, 1.0, (n, slots, 2)) * (c.image_size - extent[..., None]) + extent[..., None] / 2
    return Slots(num_keys, present, shape_ids, colours, extent, rotation, centres)


def paint_slots(slots: Slots, size: int, texture: float, generator: torch.Generator):
    """Paint the slots over a textured background, the others first and the rings last (on top).

    Returns images (n, 3, H, W) uint8 and owner (n, H, W) long, the slot each pixel shows
    (-1 on background), from which the labels are read.
    """
    n, num_slots = slots.present.shape
    hue = torch.tensor(PALETTE_HUES)[slots.colours] + uniform(generator, -0.03, 0.03, (n, num_slots))
    rgb = hsv_to_rgb(hue % 1, uniform(generator, 0.6, 0.9, (n, num_slots)),
                     uniform(generator, 0.65, 0.95, (n, num_slots)))  # (n, slots, 3)
    image = background(generator, n, size, texture)  # (n, 3, H, W)
    owner = torch.full((n, size, size), -1, dtype=torch.long)
    gy, gx = pixel_centres(size)  # (H, W)
    for slot in list(range(slots.num_keys, num_slots)) + list(range(slots.num_keys)):
        half = slots.extent[:, slot, None, None] / 2
        u, v = object_frame(gx, gy, slots.centres[:, slot, 0, None, None], slots.centres[:, slot, 1, None, None],
                            half, half, slots.rotation[:, slot, None, None])  # (n, H, W)
        if slot < slots.num_keys:
            mask = INSIDE_TESTS[KEY_SHAPE](u, v)
        else:
            mask = masks_by_shape(OTHER_SHAPES, slots.shape_ids[:, slot], u, v)
        mask &= slots.present[:, slot, None, None]
        image = torch.where(mask[:, None], rgb[:, slot, :, None, None], image)
        owner = torch.where(mask, torch.full_like(owner, slot), owner)
    shading = 1 + 0.05 * torch.randn((n, 1, size, size), generator=generator)
    return ((image * shading).clamp(0, 1) * 255).round().to(torch.uint8), owner


def read_slots(values: torch.Tensor, owner: torch.Tensor, empty: int) -> torch.Tensor:
    """Per pixel, ``values`` (n, S) of the slot it shows (owner (n, H, W)); ``empty`` on background."""
    read = torch.gather(values, 1, owner.clamp(min=0).flatten(1)).view_as(owner)
    return torch.where(owner >= 0, read, torch.full_like(read, empty))


def generate_context_scenes(config: ContextScenesConfig) -> ContextScenes:
    """Draw the set ``config`` describes (deterministic in ``config.seed``)."""
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + 29)
    slots = sample_slots(config, 1, generator)  # slot 0: the key ring
    images, owner = paint_slots(slots, config.image_size, config.texture, generator)
    key_colours = slots.colours[:, 0]
    labels = torch.where(owner >= 0, 1 + key_colours[:, None, None], 0)  # every object reads the ring
    return ContextScenes(config, images, labels, owner == 0, key_colours, slots.centres[:, 0].clone())
