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
Drawn with :mod:`kit.data.context_scenes`' slot sampling and painting, from a seeded generator
on the CPU (fast for a few thousand 48 px images), then moved to any device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kit.data.context_scenes import (ContextScenes, ContextScenesConfig, Slots, paint_slots, read_slots,
                                     sample_slots)
from kit.data.dataset import check_config
from kit.data.raster import uniform

CANDIDATES = 64  # positions tried for the second ring (the first far enough from the first ring wins)


@dataclass(frozen=True)
class TwoRingScenesConfig(ContextScenesConfig):
    """Parameters of a two-ring scene set: :class:`~kit.data.context_scenes.ContextScenesConfig`'s,
    with smaller defaults, ``key_size`` the range of both rings, and

    min_separation: the two ring centres are at least this far apart (pixels) when a position
    among the tried candidates allows it (else the farthest candidate is used).
    """

    image_size: int = 48
    num_colours: int = 3
    min_size: float = 6.0  # the other objects
    max_size: float = 12.0
    key_size: tuple = (10.0, 14.0)  # the rings' size range
    min_separation: float = 22.0

    def __post_init__(self):
        super().__post_init__()
        check_config(self, [(0 <= self.min_separation <= self.image_size, "min_separation must be in [0, image_size]")])


@dataclass
class TwoRingScenes(ContextScenes):
    """:class:`~kit.data.context_scenes.ContextScenes` with two rings per image (same ``batch``,
    ``class_names``). images (B, 3, H, W) uint8; labels (B, H, W) long (0 background, 1 + nearest
    ring's colour on objects); key_masks (B, 2, H, W) bool, each ring's visible pixels; key_colours
    (B, 2) long (always different); key_centres (B, 2, 2) (x, y) per ring; nearest (B, H, W) long,
    the ring (0/1) an object pixel reads (-1 on background)."""

    config: TwoRingScenesConfig
    nearest: torch.Tensor


def place_second_ring(slots: Slots, config: TwoRingScenesConfig, generator: torch.Generator) -> None:
    """Move ring 1 to the first of ``CANDIDATES`` random positions at least ``min_separation`` from
    ring 0 (the farthest candidate when none is). Changes ``slots.centres`` in place."""
    n, size, extent = config.num_images, config.image_size, slots.extent[:, 1, None, None]  # (n, 1, 1)
    candidates = uniform(generator, 0.0, 1.0, (n, CANDIDATES, 2)) * (size - extent) + extent / 2  # (n, C, 2)
    distance = (candidates - slots.centres[:, :1]).norm(dim=-1)  # (n, C)
    far = distance >= config.min_separation
    first_far = torch.where(far.any(1), far.float().argmax(1), distance.argmax(1))  # (n,)
    slots.centres[:, 1] = candidates[torch.arange(n), first_far]


def nearest_rings(centres: torch.Tensor) -> torch.Tensor:
    """Per slot (n, S), the ring (0 or 1) whose centre is nearer the slot's centre; rings read themselves."""
    to_rings = (centres[:, :, None] - centres[:, None, :2]).norm(dim=-1)  # (n, S, 2)
    nearest = to_rings.argmin(-1)  # (n, S)
    nearest[:, 0], nearest[:, 1] = 0, 1
    return nearest


def generate_two_ring_scenes(config: TwoRingScenesConfig) -> TwoRingScenes:
    """Draw the set ``config`` describes (deterministic in ``config.seed``)."""
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + 41)
    slots = sample_slots(config, 2, generator)  # slots 0 and 1: the rings
    place_second_ring(slots, config, generator)
    nearest_ring = nearest_rings(slots.centres)  # (n, S)
    slot_label = 1 + torch.gather(slots.colours[:, :2], 1, nearest_ring)  # (n, S)
    images, owner = paint_slots(slots, config.image_size, config.texture, generator)
    key_masks = torch.stack([owner == 0, owner == 1], dim=1)  # (n, 2, H, W)
    return TwoRingScenes(config, images, read_slots(slot_label, owner, 0), key_masks, slots.colours[:, :2].clone(),
                         slots.centres[:, :2].clone(), read_slots(nearest_ring, owner, -1))
