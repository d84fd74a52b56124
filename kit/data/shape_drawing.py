"""The drawing steps of the shape scenes, as public functions other generators reuse.

:mod:`kit.data.shapes` draws an image block in five steps: sample the objects' parameters (one
slot per possible object), rasterise their full masks, occlude (later slots on top; mostly
hidden objects dropped), paint a textured background with every visible mask in its colour,
and pack the kept objects to the front of the slots. :func:`draw_objects` runs the last four
on objects from :func:`sample_objects` (or on objects a generator set itself), with two hooks
:mod:`kit.data.longtail_scenes` needs: labels other than the shape ids, and base hues other
than the class hues.

These are the steps of ``kit.data.shapes`` (its private ``_sample_objects`` ... ``_pack``), drawn
from the same generator stream in the same order, so with ``labels=None`` and ``base_hue=None``
they give bit-identical images (``tests/test_longtail_scenes.py`` checks it). ``shapes.py``
keeps its own copy for now: switching it to call these would change its code and make every
page drawn from shape scenes stale (21 pages, which would then have to be re-executed). The
next change that re-executes those pages anyway should make ``shapes._render_block`` call
:func:`draw_objects` and drop the copy.
"""
from __future__ import annotations

import math

import torch

from kit.data.raster import INSIDE_TESTS, background, hsv_to_rgb, object_frame, pixel_centres, tight_boxes, uniform
from kit.data.shapes import CLASS_HUES, SHAPES, ShapeSceneConfig

__all__ = ["sample_objects", "draw_objects", "full_masks", "visible_parts", "occlude", "paint", "pack"]


def sample_objects(config: ShapeSceneConfig, n: int, generator, device) -> dict[str, torch.Tensor]:
    """Object parameters, one slot per possible object: (n, K) each; sizes and centres in pixels."""
    size, k = config.image_size, config.max_objects
    count = torch.randint(config.min_objects, k + 1, (n, 1), generator=generator, device=device)
    present = torch.arange(k, device=device)[None] < count
    shape_id = torch.randint(0, config.num_classes, (n, k), generator=generator, device=device)
    # Log-size between min and max; u^(1/skew) leans towards large objects when skew > 1.
    position = torch.rand((n, k), generator=generator, device=device) ** (1.0 / config.size_skew)
    log_size = math.log(config.min_size) + position * (math.log(config.resolved_max_size()) - math.log(config.min_size))
    extent = log_size.exp()  # longer side, pixels
    log_aspect = uniform(generator, -math.log(config.max_aspect), math.log(config.max_aspect), (n, k), device)
    half_w = extent / 2 * torch.exp(torch.clamp(log_aspect, max=0))  # the longer side is `extent`
    half_h = extent / 2 * torch.exp(torch.clamp(-log_aspect, max=0))
    # Small rotations only: a square turned by 45 degrees would be a diamond.
    rotation = uniform(generator, -math.pi / 8, math.pi / 8, (n, k), device)
    reach = 0.6 * extent / 2  # centres keep most of the object inside the image
    low = torch.minimum(reach, torch.full_like(reach, size / 2))
    high = torch.maximum(size - reach, torch.full_like(reach, size / 2))
    cx = uniform(generator, low, high, (n, k), device)
    cy = uniform(generator, low, high, (n, k), device)
    return dict(present=present, shape_id=shape_id, cx=cx, cy=cy, half_w=half_w, half_h=half_h, rotation=rotation)


def draw_objects(config: ShapeSceneConfig, objects: dict, generator, device, labels=None, base_hue=None,
                 labelled=None) -> dict[str, torch.Tensor]:
    """Occlude and paint :func:`sample_objects`' objects, then annotate what stayed visible: images,
    boxes, labels, masks, areas. ``labels`` (n, K) replaces the shape ids as labels, ``base_hue``
    (n, K) the class hues, ``labelled`` (classes,) bool leaves the other classes unannotated."""
    full = full_masks(objects, config.image_size)
    keep, visible, boxes = occlude(full, objects["present"], config.min_visible)
    images = paint(config, objects["shape_id"], visible, generator, device, base_hue)
    if labelled is not None:
        keep = keep & labelled[objects["shape_id"]]
    return dict(images=images, **pack(keep, objects["shape_id"] if labels is None else labels, visible, boxes))


def full_masks(objects: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    """Unoccluded masks (n, K, H, W) of every present object.

    Each object is evaluated with its own shape's test only, and only where it is present,
    so the cost is one test per real object and pixel.
    """
    n, k = objects["shape_id"].shape
    flat = {name: tensor.reshape(n * k) for name, tensor in objects.items()}  # (n K,) each
    masks = torch.zeros((n * k, size, size), dtype=torch.bool, device=flat["shape_id"].device)
    gy, gx = pixel_centres(size, masks.device)  # (H, W)
    for shape_index, name in enumerate(SHAPES):
        chosen = torch.nonzero(flat["present"] & (flat["shape_id"] == shape_index)).flatten()  # (P,)
        for chunk in chosen.split(4096):
            pick = {key: flat[key][chunk][:, None, None] for key in ("cx", "cy", "half_w", "half_h", "rotation")}
            u, v = object_frame(gx, gy, **pick)  # (P, H, W)
            masks[chunk] = INSIDE_TESTS[name](u, v)
    return masks.view(n, k, size, size)


def visible_parts(full: torch.Tensor) -> torch.Tensor:
    """The part of each mask (n, K, H, W) that no later slot covers (later slots are on top)."""
    visible = torch.empty_like(full)
    covered = torch.zeros_like(full[:, 0])  # (n, H, W)
    for slot in reversed(range(full.shape[1])):
        visible[:, slot] = full[:, slot] & ~covered
        covered |= full[:, slot]
    return visible


def occlude(full: torch.Tensor, present: torch.Tensor, min_visible: float):
    """Which objects stay (n, K), their visible masks (n, K, H, W) and tight boxes (n, K, 4).

    Objects that end up mostly hidden are dropped and visibility recomputed (removing an
    object only uncovers the ones below it); boxes narrower than 2 pixels are dropped too.
    """
    visible = visible_parts(full)
    full_area = full.flatten(2).sum(-1).float()
    visible_area = visible.flatten(2).sum(-1).float()
    keep = present & (visible_area >= min_visible * full_area) & (visible_area >= 4)
    visible = visible_parts(full & keep[..., None, None])
    boxes = tight_boxes(visible)
    keep = keep & ((boxes[..., 2] - boxes[..., 0]) >= 2) & ((boxes[..., 3] - boxes[..., 1]) >= 2)
    visible &= keep[..., None, None]
    return keep, visible, boxes


def paint(config: ShapeSceneConfig, shape_id, visible, generator, device, base_hue=None) -> torch.Tensor:
    """Images (n, 3, H, W) uint8: a textured background with every visible mask in its colour.

    Colours are the class hue (or ``base_hue`` (n, K)) with jitter, or any hue; bright and saturated.
    """
    n, k, size = *shape_id.shape, config.image_size
    if config.color_by_class:
        hue = CLASS_HUES.to(device)[shape_id] if base_hue is None else base_hue
        hue = (hue + uniform(generator, -0.04, 0.04, (n, k), device)) % 1
    else:
        hue = torch.rand((n, k), generator=generator, device=device)
    colour = hsv_to_rgb(hue, uniform(generator, 0.55, 1.0, (n, k), device),
                        uniform(generator, 0.55, 1.0, (n, k), device))  # (n, K, 3)
    image = background(generator, n, size, config.texture, device)  # (n, 3, H, W)
    shading = 1 + 0.08 * torch.randn((n, 1, size, size), generator=generator, device=device)
    for slot in range(k):  # visible masks are disjoint, so the order here does not matter
        m = visible[:, slot, None].float()  # (n, 1, H, W)
        image = image * (1 - m) + m * colour[:, slot, :, None, None] * shading
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def pack(keep, shape_id, visible, boxes) -> dict[str, torch.Tensor]:
    """Move the kept objects to the front of the slots (in slot order); empty slots get label -1."""
    n, k = keep.shape
    order = torch.argsort((~keep).int(), dim=1, stable=True)  # (n, K)
    take = lambda t: torch.gather(t, 1, order.view(n, k, *([1] * (t.dim() - 2))).expand_as(t))
    keep_sorted = take(keep)
    labels = torch.where(keep_sorted, take(shape_id), torch.full_like(shape_id, -1))
    masks = take(visible & keep[..., None, None])
    boxes = take(boxes) * keep_sorted[..., None]
    areas = masks.flatten(2).sum(-1).float()
    return dict(boxes=boxes, labels=labels, masks=masks, areas=areas)
