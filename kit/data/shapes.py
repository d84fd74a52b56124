"""Shape scenes: a seeded generator of small detection images with boxes, masks and COCO json.

Every image holds a few filled shapes on a textured background. The class of an object is
its shape (circle, square, triangle, ring, cross, diamond, half-disc, star, and two shapes whose
mass sits far off their box centre, corner and pin, used when ``num_classes`` > 8); its colour is a
class hue with jitter (or fully random with ``color_by_class=False``), so the detector has to
look at shape as well as colour. Objects range from a few pixels to most of the image,
are rotated and stretched, overlap (later shapes occlude earlier ones) and may be cut by the
image border. Boxes are the tight boxes of the *visible* masks, as COCO annotates them.

Everything is drawn with tensor ops over a pixel grid, all images at once, so the same code
generates on the GPU (``device="cuda"``) for the gpu profile. On the CPU the result is
cached under ``data/cache/`` (:mod:`kit.data.cache`): same parameters and same generator
source, same tensors.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from kit.data import cache

SHAPES = ("circle", "square", "triangle", "ring", "cross", "diamond", "half-disc", "star", "corner", "pin")

# One hue per class (HSV hue in [0, 1)), spread around the colour wheel.
_CLASS_HUES = torch.tensor([0.00, 0.58, 0.33, 0.12, 0.78, 0.47, 0.90, 0.22, 0.68, 0.275])


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
        checks = [
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
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"ShapeSceneConfig: {message} (got {self})")

    def resolved_max_size(self) -> float:
        return float(self.max_size) if self.max_size is not None else 0.8 * self.image_size


@dataclass
class ShapeScenes:
    """A generated dataset. Object slots are padded to ``max_objects``; ``labels == -1`` is empty.

    images: (B, 3, H, W) uint8; boxes: (B, K, 4) float xyxy in pixels; labels: (B, K) long;
    masks: (B, K, H, W) bool visible masks; areas: (B, K) float visible area in pixels.
    """

    config: ShapeSceneConfig
    images: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    areas: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def class_names(self) -> list[str]:
        return list(SHAPES[: self.config.num_classes])

    def targets(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes (M, 4) and labels (M,) of the objects in image ``index``."""
        keep = self.labels[index] >= 0
        return self.boxes[index][keep], self.labels[index][keep]

    def batch(self, indices, device: torch.device | str | None = None):
        """Float images in [0, 1] (B, 3, H, W) and per-image target lists, on ``device``."""
        indices = torch.as_tensor(indices, dtype=torch.long, device=self.images.device)
        images = self.images[indices].to(device=device).float().div_(255)
        boxes = [self.targets(int(i))[0].to(device) for i in indices]
        labels = [self.targets(int(i))[1].to(device) for i in indices]
        return images, boxes, labels

    def to(self, device) -> "ShapeScenes":
        """The same dataset with every tensor moved to ``device`` (for data held on the GPU)."""
        moved = {k: getattr(self, k).to(device) for k in ("images", "boxes", "labels", "masks", "areas")}
        return ShapeScenes(self.config, **moved)

    def subset(self, indices) -> "ShapeScenes":
        indices = torch.as_tensor(indices, dtype=torch.long)
        parts = {k: getattr(self, k)[indices] for k in ("images", "boxes", "labels", "masks", "areas")}
        return ShapeScenes(self.config, **parts)


# --------------------------------------------------------------------------- geometry


def _star_radius(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Radius of a five-pointed star (between 0.45 and 1) in the direction of (u, v)."""
    return 0.45 + 0.55 * (0.5 + 0.5 * torch.cos(5 * torch.atan2(v, u))) ** 2


# Inside tests in the object's unit frame: (u, v) are pixel coordinates in units of the
# object's half-extents, "up" is +v, and every shape spans [-1, 1] on both axes.
_INSIDE_TESTS = {
    "circle": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: torch.maximum(u.abs(), v.abs()) <= 0.85,
    "triangle": lambda u, v: (v <= 0.75) & (v >= 1.732 * u.abs() - 1.0),
    "ring": lambda u, v: ((u * u + v * v) <= 1.0) & ((u * u + v * v) >= 0.55**2),
    "cross": lambda u, v: ((u.abs() <= 0.33) & (v.abs() <= 1.0)) | ((v.abs() <= 0.33) & (u.abs() <= 1.0)),
    "diamond": lambda u, v: u.abs() + v.abs() <= 1.0,
    "half-disc": lambda u, v: (u * u + v * v <= 1.0) & (v >= -0.1),
    "star": lambda u, v: torch.sqrt(u * u + v * v) <= _star_radius(u, v),
    # Asymmetric mass (AutoAssign's centre prior): an L with its bars at the left and bottom,
    # and a pin, a round head on a thin stem.
    "corner": lambda u, v: (u.abs() <= 1.0) & (v.abs() <= 1.0) & ((u <= -0.3) | (v <= -0.3)),
    "pin": lambda u, v: (u * u + (v - 0.45) ** 2 <= 0.55**2) | ((u.abs() <= 0.14) & (v >= -1.0) & (v <= 0.45)),
}


def _full_masks(shape_id, cx, cy, half_w, half_h, rotation, present, size) -> torch.Tensor:
    """Unoccluded masks (n, K, H, W) of every present object.

    Each object is evaluated with its own shape's test only, and only where it is present,
    so the cost is one test per real object and pixel.
    """
    n, k = shape_id.shape
    device = shape_id.device
    masks = torch.zeros((n * k, size, size), dtype=torch.bool, device=device)
    grid = torch.arange(size, device=device, dtype=torch.float32) + 0.5
    gy, gx = torch.meshgrid(grid, grid, indexing="ij")  # (H, W)
    flat = lambda t: t.reshape(n * k)
    for shape_index, name in enumerate(SHAPES):
        objects = torch.nonzero(flat(present) & (flat(shape_id) == shape_index)).flatten()  # (P,)
        for chunk in objects.split(4096):
            pick = lambda t: flat(t)[chunk][:, None, None]  # (P, 1, 1)
            dx, dy = gx - pick(cx), gy - pick(cy)  # (P, H, W)
            cos, sin = torch.cos(pick(rotation)), torch.sin(pick(rotation))
            u = (dx * cos + dy * sin) / pick(half_w)
            v = (dx * sin - dy * cos) / pick(half_h)  # image y points down; +v is up
            masks[chunk] = _INSIDE_TESTS[name](u, v)
    return masks.view(n, k, size, size)


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """HSV in [0, 1] (any shape) to RGB (..., 3)."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=-1)
    f = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return v.unsqueeze(-1) * (1 - s.unsqueeze(-1) * f)


def _uniform(generator, shape, low, high, device):
    return low + (high - low) * torch.rand(shape, generator=generator, device=device)


def _background(generator, n, size, texture, device) -> torch.Tensor:
    """Textured backgrounds (n, 3, H, W) in [0, 1]: a base colour, three gratings, and noise."""
    coords = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    y, x = torch.meshgrid(coords, coords, indexing="ij")  # (H, W)
    base = _hsv_to_rgb(
        torch.rand(n, generator=generator, device=device),
        _uniform(generator, (n,), 0.1, 0.5, device),
        _uniform(generator, (n,), 0.25, 0.75, device),
    )  # (n, 3)
    image = base[:, :, None, None].expand(n, 3, size, size).clone()
    for _ in range(3):
        theta = _uniform(generator, (n, 1, 1), 0, math.pi, device)
        freq = _uniform(generator, (n, 1, 1), 2, 10, device)
        phase = _uniform(generator, (n, 1, 1), 0, 2 * math.pi, device)
        grating = torch.sin(2 * math.pi * freq * (x * torch.cos(theta) + y * torch.sin(theta)) + phase)
        tint = _uniform(generator, (n, 3, 1, 1), -1, 1, device)
        image += texture / 3 * tint * grating[:, None]
    image += 0.04 * torch.randn(image.shape, generator=generator, device=device)
    return image.clamp_(0, 1)


def _visible_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes (B, K, 4) of boolean masks (B, K, H, W); zeros for empty masks."""
    h, w = masks.shape[-2:]
    cols = masks.any(dim=-2)  # (B, K, W)
    rows = masks.any(dim=-1)  # (B, K, H)
    x0 = cols.float().argmax(dim=-1)
    x1 = w - cols.flip(-1).float().argmax(dim=-1)
    y0 = rows.float().argmax(dim=-1)
    y1 = h - rows.flip(-1).float().argmax(dim=-1)
    boxes = torch.stack([x0, y0, x1, y1], dim=-1).float()
    return boxes * cols.any(dim=-1, keepdim=True)


_BLOCK = 256  # images drawn per block; block b uses its own generator seeded by (seed, b)


def _render(config: ShapeSceneConfig, device) -> dict[str, torch.Tensor]:
    """Draw the whole dataset in blocks of 256 images; returns the tensors of :class:`ShapeScenes`.

    Each block has its own generator, seeded from ``(seed, block index)``, so two datasets
    with the same seed share their whole blocks (the first 256 images of a 300-image set are
    the 256-image set), and memory stays small.
    """
    blocks = []
    for block, start in enumerate(range(0, config.num_images, _BLOCK)):
        count = min(_BLOCK, config.num_images - start)
        generator = torch.Generator(device=device).manual_seed(config.seed * 1_000_003 + block)
        blocks.append(_render_block(config, count, generator, device))
    return {key: torch.cat([b[key] for b in blocks]) for key in blocks[0]}


def _render_block(config: ShapeSceneConfig, n: int, generator, device) -> dict[str, torch.Tensor]:
    """Draw ``n`` images with tensor ops over the pixel grid."""
    size, k = config.image_size, config.max_objects

    # Object parameters, one slot per possible object: (n, K) each.
    count = torch.randint(config.min_objects, k + 1, (n, 1), generator=generator, device=device)
    present = torch.arange(k, device=device)[None] < count
    shape_id = torch.randint(0, config.num_classes, (n, k), generator=generator, device=device)
    # Log-size between min and max; u^(1/skew) leans towards large objects when skew > 1.
    position = torch.rand((n, k), generator=generator, device=device) ** (1.0 / config.size_skew)
    log_size = math.log(config.min_size) + position * (math.log(config.resolved_max_size()) - math.log(config.min_size))
    extent = log_size.exp()  # longer side, pixels
    log_aspect = _uniform(generator, (n, k), -math.log(config.max_aspect),
                          math.log(config.max_aspect), device)
    half_w = extent / 2 * torch.exp(torch.clamp(log_aspect, max=0))  # the longer side is `extent`
    half_h = extent / 2 * torch.exp(torch.clamp(-log_aspect, max=0))
    # Small rotations only: a square turned by 45 degrees would be a diamond.
    rotation = _uniform(generator, (n, k), -math.pi / 8, math.pi / 8, device)
    reach = 0.6 * extent / 2  # centres keep most of the object inside the image
    low = torch.minimum(reach, torch.full_like(reach, size / 2))
    high = torch.maximum(size - reach, torch.full_like(reach, size / 2))
    cx = low + (high - low) * torch.rand((n, k), generator=generator, device=device)
    cy = low + (high - low) * torch.rand((n, k), generator=generator, device=device)

    full = _full_masks(shape_id, cx, cy, half_w, half_h, rotation, present, size)

    # Occlusion: later slots are painted on top. Drop objects that end up mostly hidden, then
    # recompute visibility (removing an object only uncovers the ones below it).
    def visible_of(full_masks):  # (n, K, H, W) -> the part of each mask no later slot covers
        visible_masks = torch.empty_like(full_masks)
        covered = torch.zeros_like(full_masks[:, 0])
        for slot in reversed(range(full_masks.shape[1])):
            visible_masks[:, slot] = full_masks[:, slot] & ~covered
            covered |= full_masks[:, slot]
        return visible_masks

    visible = visible_of(full)
    full_area = full.flatten(2).sum(-1).float()
    vis_area = visible.flatten(2).sum(-1).float()
    keep = present & (vis_area >= config.min_visible * full_area) & (vis_area >= 4)
    full = full & keep[..., None, None]
    visible = visible_of(full)
    boxes = _visible_boxes(visible)
    keep = keep & ((boxes[..., 2] - boxes[..., 0]) >= 2) & ((boxes[..., 3] - boxes[..., 1]) >= 2)
    visible &= keep[..., None, None]

    # Colours: class hue with jitter (or any hue), bright and saturated enough to stand out.
    if config.color_by_class:
        hue = (_CLASS_HUES.to(device)[shape_id] + _uniform(generator, (n, k), -0.04, 0.04, device)) % 1
    else:
        hue = torch.rand((n, k), generator=generator, device=device)
    colour = _hsv_to_rgb(hue, _uniform(generator, (n, k), 0.55, 1.0, device),
                         _uniform(generator, (n, k), 0.55, 1.0, device))  # (n, K, 3)
    image = _background(generator, n, size, config.texture, device)
    shading = 1 + 0.08 * torch.randn((n, 1, size, size), generator=generator, device=device)
    for slot in range(k):  # visible masks are disjoint, so the order here does not matter
        m = visible[:, slot, None].float()  # (n, 1, H, W)
        image = image * (1 - m) + m * colour[:, slot, :, None, None] * shading
    images = (image.clamp(0, 1) * 255).round().to(torch.uint8)

    # Objects of classes this dataset does not label stay in the image but get no annotation.
    if config.labelled_classes is not None:
        labelled = torch.zeros(config.num_classes, dtype=torch.bool, device=device)
        labelled[list(config.labelled_classes)] = True
        keep = keep & labelled[shape_id]

    # Pack the present objects to the front of the slots, ordered by slot.
    order = torch.argsort((~keep).int(), dim=1, stable=True)
    take = lambda t: torch.gather(t, 1, order.view(n, k, *([1] * (t.dim() - 2))).expand_as(t))
    keep_sorted = take(keep)
    labels = torch.where(keep_sorted, take(shape_id), torch.full_like(shape_id, -1))
    masks = take(visible & keep[..., None, None])
    boxes = take(boxes) * keep_sorted[..., None]
    areas = masks.flatten(2).sum(-1).float()
    return dict(images=images, boxes=boxes, labels=labels, masks=masks, areas=areas)


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
    packed["masks"] = torch.from_numpy(np.packbits(tensors.pop("masks").numpy(), axis=-1))
    return packed


def _unpack_masks(stored: dict, size: int) -> dict:
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
    boxes, labels, areas = scenes.boxes.cpu(), scenes.labels.cpu(), scenes.areas.cpu()
    if with_masks:
        from pycocotools import mask as mask_utils
    for i in range(len(scenes)):
        for slot in torch.nonzero(labels[i] >= 0).flatten().tolist():
            x0, y0, x1, y1 = boxes[i, slot].tolist()
            ann = {"id": len(annotations) + 1, "image_id": i, "category_id": int(labels[i, slot]),
                   "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(areas[i, slot]), "iscrowd": 0}
            if with_masks:
                binary = scenes.masks[i, slot].cpu().numpy().astype("uint8", order="F")
                rle = mask_utils.encode(binary)
                rle["counts"] = rle["counts"].decode("ascii")
                ann["segmentation"] = rle
            annotations.append(ann)
    return {"images": images, "annotations": annotations, "categories": categories}
