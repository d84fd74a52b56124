"""Two-ring scenes: segmentation where an object's class is the colour of the *nearest* ring.

A toy that tells spatial-attention terms apart (the study of arXiv 1904.05873, P41). Every
image holds two *key* objects, rings of two different palette colours placed far apart, and a
few other shapes painted in random palette colours. The label of every pixel of an object is
``1 + colour`` of the ring whose centre is nearest to the object's centre (a ring's own pixels
take its own colour; background 0). To label an object far from both rings a network must
find the rings (key content) *and* tell which one is closer (relative position):

* key content alone (a saliency, the same for every query) finds both rings but not the nearer;
* relative position alone (a fixed kernel over offsets) weighs near keys more, but cannot
  single out rings from the other objects;
* their sum can do both — which is what the attention study asks about.

Every shape's colour is random, so the image's colour statistics alone do not give the answer.
Drawn with tensor ops from a seeded generator on the CPU (fast for a few thousand 48 px
images), then moved to any device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from kit.data.context_scenes import COLOUR_NAMES, KEY_SHAPE, OTHER_SHAPES, PALETTE_HUES, ContextScenes
from kit.data.shapes import _INSIDE_TESTS, _background, _hsv_to_rgb
_CANDIDATES = 64  # positions tried for the second ring (the first far enough from the first ring wins)


@dataclass(frozen=True)
class TwoRingScenesConfig:
    """Parameters of a two-ring scene set. Sizes are object extents (longer side) in pixels.

    min_separation: the two ring centres are at least this far apart (pixels) when a position
    among the tried candidates allows it (else the farthest candidate is used).
    """

    num_images: int
    image_size: int = 48
    num_colours: int = 3
    min_others: int = 2  # objects besides the two rings
    max_others: int = 4
    min_size: float = 6.0  # the other objects
    max_size: float = 12.0
    key_size: tuple = (10.0, 14.0)  # the rings' size range
    min_separation: float = 22.0
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
            (0 <= self.min_separation <= self.image_size, "min_separation must be in [0, image_size]"),
            (self.texture >= 0, "texture must be >= 0"),
            (self.seed >= 0, "seed must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"TwoRingScenesConfig: {message} (got {self})")

    @property
    def num_classes(self) -> int:
        """Segmentation classes: background plus one per palette colour."""
        return 1 + self.num_colours


@dataclass
class TwoRingScenes(ContextScenes):
    """:class:`~kit.data.context_scenes.ContextScenes` with two rings per image (same ``batch``,
    ``class_names``). images (B, 3, H, W) uint8; labels (B, H, W) long (0 background, 1 + nearest
    ring's colour on objects); key_masks (B, 2, H, W) bool, each ring's visible pixels; key_colours
    (B, 2) long (always different); key_centres (B, 2, 2) (x, y) per ring; nearest (B, H, W) long,
    the ring (0/1) an object pixel reads (-1 on background)."""

    config: TwoRingScenesConfig
    nearest: torch.Tensor

    def to(self, device) -> "TwoRingScenes":
        return TwoRingScenes(self.config, **{f.name: getattr(self, f.name).to(device)
                                             for f in fields(self) if f.name != "config"})


def generate_two_ring_scenes(config: TwoRingScenesConfig) -> TwoRingScenes:
    """Draw the set ``config`` describes (deterministic in ``config.seed``)."""
    c, size, n = config, config.image_size, config.num_images
    generator = torch.Generator().manual_seed(c.seed * 1_000_003 + 41)
    uniform = lambda low, high, shape: low + (high - low) * torch.rand(shape, generator=generator)
    slots = 2 + c.max_others  # slots 0 and 1 are the rings, drawn last (on top) so they stay visible
    count = torch.randint(c.min_others, c.max_others + 1, (n, 1), generator=generator)
    present = torch.arange(slots)[None] < 2 + count  # (n, slots); both rings always present
    shape_ids = torch.randint(0, len(OTHER_SHAPES), (n, slots), generator=generator)
    colours = torch.randint(0, c.num_colours, (n, slots), generator=generator)
    # The two rings get two different colours: the second is shifted by 1 .. num_colours-1.
    colours[:, 1] = (colours[:, 0] + torch.randint(1, c.num_colours, (n,), generator=generator)) % c.num_colours
    extent = torch.exp(uniform(math.log(c.min_size), math.log(c.max_size), (n, slots)))
    extent[:, :2] = uniform(c.key_size[0], c.key_size[1], (n, 2))
    rotation = uniform(-math.pi / 8, math.pi / 8, (n, slots))
    centres = uniform(0.0, 1.0, (n, slots, 2)) * (size - extent[..., None]) + extent[..., None] / 2
    # Second ring: the first of the candidate positions far enough from the first ring (else the farthest).
    candidates = uniform(0.0, 1.0, (n, _CANDIDATES, 2)) * (size - extent[:, 1, None, None]) + extent[:, 1, None, None] / 2
    distance = (candidates - centres[:, :1]).norm(dim=-1)  # (n, candidates)
    far = distance >= c.min_separation
    first_far = torch.where(far.any(1), far.float().argmax(1), distance.argmax(1))
    centres[:, 1] = candidates[torch.arange(n), first_far]
    # Which ring each slot reads: the nearer ring centre to the slot's centre (rings read themselves).
    to_rings = (centres[:, :, None] - centres[:, None, :2]).norm(dim=-1)  # (n, slots, 2)
    nearest_ring = to_rings.argmin(-1)  # (n, slots)
    nearest_ring[:, 0], nearest_ring[:, 1] = 0, 1
    slot_label = 1 + torch.gather(colours[:, :2], 1, nearest_ring)  # (n, slots)

    grid = torch.arange(size, dtype=torch.float32) + 0.5
    gy, gx = torch.meshgrid(grid, grid, indexing="ij")  # (H, W)
    hue = torch.tensor(PALETTE_HUES)[colours] + uniform(-0.03, 0.03, (n, slots))
    rgb = _hsv_to_rgb(hue % 1, uniform(0.6, 0.9, (n, slots)), uniform(0.65, 0.95, (n, slots)))  # (n, slots, 3)
    image = _background(generator, n, size, c.texture, "cpu")  # (n, 3, H, W)
    labels = torch.zeros((n, size, size), dtype=torch.long)
    nearest = torch.full((n, size, size), -1, dtype=torch.long)
    owner = torch.full((n, size, size), -1, dtype=torch.long)  # the slot a pixel shows
    for slot in list(range(2, slots)) + [0, 1]:  # the others first, the rings last
        dx, dy = gx - centres[:, slot, 0, None, None], gy - centres[:, slot, 1, None, None]  # (n, H, W)
        cos, sin = rotation[:, slot, None, None].cos(), rotation[:, slot, None, None].sin()
        half = extent[:, slot, None, None] / 2
        u, v = (dx * cos + dy * sin) / half, (dx * sin - dy * cos) / half
        if slot < 2:
            mask = _INSIDE_TESTS[KEY_SHAPE](u, v)
        else:
            mask = torch.zeros((n, size, size), dtype=torch.bool)
            for index, name in enumerate(OTHER_SHAPES):
                chosen = shape_ids[:, slot] == index
                mask[chosen] = _INSIDE_TESTS[name](u[chosen], v[chosen])
        mask &= present[:, slot, None, None]
        image = torch.where(mask[:, None], rgb[:, slot, :, None, None], image)
        labels = torch.where(mask, slot_label[:, slot, None, None], labels)
        nearest = torch.where(mask, nearest_ring[:, slot, None, None], nearest)
        owner = torch.where(mask, torch.full_like(owner, slot), owner)
    key_masks = torch.stack([owner == 0, owner == 1], dim=1)  # (n, 2, H, W)
    shading = 1 + 0.05 * torch.randn((n, 1, size, size), generator=generator)
    images = ((image * shading).clamp(0, 1) * 255).round().to(torch.uint8)
    return TwoRingScenes(c, images, labels, key_masks, colours[:, :2].clone(), centres[:, :2].clone(), nearest)
