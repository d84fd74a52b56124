"""Shape scenes: a seeded generator of small detection images with boxes, masks and COCO json.

Every image holds a few filled shapes on a textured background. The class of an object is
its shape (circle, square, triangle, ring, cross, diamond, half-disc, star, and two shapes whose
mass sits far off their box centre, corner and pin, used when ``num_classes`` > 8); its colour is a
class hue with jitter (or fully random with ``color_by_class=False``), so the detector has to
look at shape as well as colour. Objects range from a few pixels to most of the image,
are rotated and stretched, overlap (later shapes occlude earlier ones) and may be cut by the
image border. Boxes are the tight boxes of the *visible* masks, as COCO annotates them.

Everything is drawn with tensor ops over a pixel grid (:mod:`kit.data.raster`), all images of a
block at once, so the same code generates on the GPU (``device="cuda"``) for the gpu profile. On the CPU the result is
cached under ``data/cache/`` (:mod:`kit.data.cache`): same parameters and same generator
source, same tensors.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torchvision.ops import box_convert

from kit.data import cache
from kit.data.dataset import GeneratedDataset, check_config
from kit.data.raster import INSIDE_TESTS, background, hsv_to_rgb, object_frame, pixel_centres, tight_boxes, uniform

SHAPES = ("circle", "square", "triangle", "ring", "cross", "diamond", "half-disc", "star", "corner", "pin")

# One hue per class (HSV hue in [0, 1)), spread around the colour wheel.
CLASS_HUES = torch.tensor([0.00, 0.58, 0.33, 0.12, 0.78, 0.47, 0.90, 0.22, 0.68, 0.275])
BLOCK = 256  # images drawn per block; block b uses its own generator seeded by (seed, b)


@dataclass(frozen=True)
class ShapeSceneConfig:
    """Parameters of a shape-scene dataset. Sizes are object extents (longer side) in pixels."""

    num_images: int
    image_size: int = 96
    num_classes: int = 6
    min_objects: int = 1
    max_objects: int = 6
    min_size: float = 6.0
    max_size: float | None = None  # default: 0.8 * image_size
    max_aspect: float = 2.0  # width/height drawn log-uniformly in [1/max_aspect, max_aspect]
    min_visible: float = 0.5  # drop objects less visible than this after occlusion
    texture: float = 0.35  # amplitude of the background texture (0 = flat)
    color_by_class: bool = True
    size_skew: float = 1.0  # > 1 draws large objects more often, < 1 small ones (1 = log-uniform)
    labelled_classes: tuple | None = None  # annotate only these classes (others are drawn, unlabelled)
    seed: int = 0

    def __post_init__(self):
        check_config(self, [
            (self.num_images >= 1, "num_images must be >= 1"),
            (self.image_size >= 16, "image_size must be >= 16 pixels"),
            (1 <= self.num_classes <= len(SHAPES), f"num_classes must be in 1..{len(SHAPES)}"),
            (1 <= self.min_objects <= self.max_objects, "need 1 <= min_objects <= max_objects"),
            (self.min_size >= 2, "min_size must be >= 2 pixels"),
            (self.resolved_max_size() >= self.min_size, "max_size must be >= min_size"),
            (self.max_aspect >= 1, "max_aspect must be >= 1"),
            (0 <= self.min_visible <= 1, "min_visible must be in [0, 1]"),
            (self.texture >= 0, "texture must be >= 0"),
            (self.size_skew > 0, "size_skew must be > 0"),
            (self.labelled_classes is None or (len(self.labelled_classes) > 0 and all(
                0 <= c < self.num_classes for c in self.labelled_classes)),
             f"labelled_classes must be a non-empty subset of 0..{self.num_classes - 1}"),
        ])

    def resolved_max_size(self) -> float:
        return float(self.max_size) if self.max_size is not None else 0.8 * self.image_size


@dataclass
class ShapeScenes(GeneratedDataset):
    """A generated dataset. Object slots are padded to ``max_objects``; ``labels == -1`` is empty.

    images: (B, 3, H, W) uint8; boxes: (B, K, 4) float xyxy in pixels; labels: (B, K) long;
    masks: (B, K, H, W) bool visible masks; areas: (B, K) float visible area in pixels.
    ``batch`` returns images (B, 3, H, W) and per-image lists of boxes (M, 4) and labels (M,).
    """

    config: ShapeSceneConfig
    images: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    areas: torch.Tensor

    @property
    def class_names(self) -> list[str]:
        return list(SHAPES[: self.config.num_classes])

    def targets(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes (M, 4) and labels (M,) of the objects in image ``index``."""
        keep = self.labels[index] >= 0
        return self.boxes[index][keep], self.labels[index][keep]

    def batch_targets(self, indices: torch.Tensor, device) -> tuple[list, list]:
        """Per image of ``indices``: its boxes (M, 4) and its labels (M,), on ``device``."""
        boxes = [self.targets(int(i))[0].to(device) for i in indices]
        labels = [self.targets(int(i))[1].to(device) for i in indices]
        return boxes, labels


# --------------------------------------------------------------------------- drawing


def _render(config: ShapeSceneConfig, device) -> dict[str, torch.Tensor]:
    """Draw the whole dataset in blocks of 256 images; returns the tensors of :class:`ShapeScenes`.

    Each block has its own generator, seeded from ``(seed, block index)``, so two datasets
    with the same seed share their whole blocks (the first 256 images of a 300-image set are
    the 256-image set), and memory stays small.
    """
    blocks = []
    for block, start in enumerate(range(0, config.num_images, BLOCK)):
        count = min(BLOCK, config.num_images - start)
        generator = torch.Generator(device=device).manual_seed(config.seed * 1_000_003 + block)
        blocks.append(_render_block(config, count, generator, device))
    return {key: torch.cat([b[key] for b in blocks]) for key in blocks[0]}


def _render_block(config: ShapeSceneConfig, n: int, generator, device) -> dict[str, torch.Tensor]:
    """Draw ``n`` images: objects, occlusion, paint, then the annotations of what stayed visible."""
    objects = _sample_objects(config, n, generator, device)
    full = _full_masks(objects, config.image_size)
    keep, visible, boxes = _occlude(full, objects["present"], config.min_visible)
    images = _paint(config, objects["shape_id"], visible, generator, device)
    # Objects of classes this dataset does not label stay in the image but get no annotation.
    if config.labelled_classes is not None:
        labelled = torch.zeros(config.num_classes, dtype=torch.bool, device=device)
        labelled[list(config.labelled_classes)] = True
        keep = keep & labelled[objects["shape_id"]]
    return dict(images=images, **_pack(keep, objects["shape_id"], visible, boxes))


def _sample_objects(config: ShapeSceneConfig, n: int, generator, device) -> dict[str, torch.Tensor]:
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


def _full_masks(objects: dict[str, torch.Tensor], size: int) -> torch.Tensor:
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


def _visible(full: torch.Tensor) -> torch.Tensor:
    """The part of each mask (n, K, H, W) that no later slot covers (later slots are on top)."""
    visible = torch.empty_like(full)
    covered = torch.zeros_like(full[:, 0])  # (n, H, W)
    for slot in reversed(range(full.shape[1])):
        visible[:, slot] = full[:, slot] & ~covered
        covered |= full[:, slot]
    return visible


def _occlude(full: torch.Tensor, present: torch.Tensor, min_visible: float):
    """Which objects stay (n, K), their visible masks (n, K, H, W) and tight boxes (n, K, 4).

    Objects that end up mostly hidden are dropped and visibility recomputed (removing an
    object only uncovers the ones below it); boxes narrower than 2 pixels are dropped too.
    """
    visible = _visible(full)
    full_area = full.flatten(2).sum(-1).float()
    visible_area = visible.flatten(2).sum(-1).float()
    keep = present & (visible_area >= min_visible * full_area) & (visible_area >= 4)
    visible = _visible(full & keep[..., None, None])
    boxes = tight_boxes(visible)
    keep = keep & ((boxes[..., 2] - boxes[..., 0]) >= 2) & ((boxes[..., 3] - boxes[..., 1]) >= 2)
    visible &= keep[..., None, None]
    return keep, visible, boxes


def _paint(config: ShapeSceneConfig, shape_id, visible, generator, device) -> torch.Tensor:
    """Images (n, 3, H, W) uint8: a textured background with every visible mask in its colour.

    Colours are the class hue with jitter (or any hue), bright and saturated enough to stand out.
    """
    n, k, size = *shape_id.shape, config.image_size
    if config.color_by_class:
        hue = (CLASS_HUES.to(device)[shape_id] + uniform(generator, -0.04, 0.04, (n, k), device)) % 1
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


def _pack(keep, shape_id, visible, boxes) -> dict[str, torch.Tensor]:
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


def generate(config: ShapeSceneConfig, device: torch.device | str = "cpu",
             use_cache: bool = True) -> ShapeScenes:
    """Generate (or load from the cache) the dataset ``config`` describes.

    On the CPU the tensors are cached under ``data/cache/``; on a GPU they are drawn on the
    device directly (a few milliseconds), which is how the gpu profile keeps data on the GPU.
    The same seed gives the same dataset on the same device type.
    """
    device = torch.device(device)
    if device.type != "cpu" or not use_cache:
        return ShapeScenes(config, **_render(config, device))
    # The key hashes this module's source (and the kit.data modules it uses) with the config,
    # so an edit to the generator regenerates the data instead of serving the old tensors.
    params = {"generator": "shapes", "source": cache.source_hash(__name__), **asdict(config)}
    stored = cache.cached("shapes", params, lambda: _pack_masks(_render(config, device)))
    return ShapeScenes(config, **_unpack_masks(stored, config.image_size))


def _pack_masks(tensors: dict) -> dict:
    """Store masks as bits (8x smaller cache files)."""
    packed = dict(tensors)
    packed["masks"] = torch.from_numpy(np.packbits(packed["masks"].numpy(), axis=-1))  # (B, K, H, ceil(W / 8)) uint8
    return packed


def _unpack_masks(stored: dict, size: int) -> dict:
    """The cache entry's masks back to (B, K, H, W) bool."""
    tensors = dict(stored)
    bits = np.unpackbits(stored["masks"].numpy(), axis=-1, count=size)
    tensors["masks"] = torch.from_numpy(bits.astype(bool))
    return tensors


def to_coco(scenes: ShapeScenes, with_masks: bool = False) -> dict:
    """The dataset as a COCO-format dict (image ids are indices, category ids are labels).

    ``bbox`` is ``[x, y, w, h]`` of the visible mask and ``area`` is the visible mask area, as
    in COCO; with ``with_masks`` each annotation also carries its RLE ``segmentation``.
    """
    size = scenes.config.image_size
    images = [{"id": i, "width": size, "height": size, "file_name": f"{i:06d}.png"}
              for i in range(len(scenes))]
    categories = [{"id": c, "name": name} for c, name in enumerate(scenes.class_names)]
    annotations = []
    xywh = box_convert(scenes.boxes.cpu(), "xyxy", "xywh")  # (B, K, 4), whole pixels
    labels, areas = scenes.labels.cpu(), scenes.areas.cpu()
    if with_masks:
        from pycocotools import mask as mask_utils
    for i in range(len(scenes)):
        for slot in torch.nonzero(labels[i] >= 0).flatten().tolist():
            ann = {"id": len(annotations) + 1, "image_id": i, "category_id": int(labels[i, slot]),
                   "bbox": xywh[i, slot].tolist(), "area": float(areas[i, slot]), "iscrowd": 0}
            if with_masks:
                binary = scenes.masks[i, slot].cpu().numpy().astype("uint8", order="F")
                rle = mask_utils.encode(binary)
                rle["counts"] = rle["counts"].decode("ascii")
                ann["segmentation"] = rle
            annotations.append(ann)
    return {"images": images, "annotations": annotations, "categories": categories}
