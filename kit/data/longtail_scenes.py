"""Long-tailed shape scenes with LVIS's federated annotation: rare, common and frequent classes.

A class is a (shape, hue family) pair: the 10 shapes of :mod:`kit.data.shapes` times up to 3
hue families (the shape's hue turned by 0, 1/3 or 2/3 of the wheel), so up to 30 classes, drawn
with :mod:`kit.data.shapes`' own sampling, occlusion and painting. Class ``c`` (0 the most
frequent) appears in an image with a Zipf-Mandelbrot probability
``q_c = top_fraction * ((1 + offset) / (c + 1 + offset)) ** exponent``, each present class
with 1..``max_instances`` instances; a class-to-(shape, family) interleave keeps the frequent
classes spread over shapes and hues.

**Groups.** LVIS calls a class rare in 1-10 training images, common in 11-100 and frequent in
more (for 100k images). Our sets are 1-3k images, so the counts are read per
``count_scale`` images' worth: the thresholds are ``10 * s`` and ``100 * s`` with
``s = count_scale`` (default ``num_images / 1000``): rare in at most 1 % of the training images,
common in at most 10 %, frequent above, whatever the set's size. The group of a class comes
from the *training* split's actual image counts (after occlusion): :func:`class_groups`.

**Federated annotation.** Each image has ``neg`` (C,) — verified-negative classes, each absent
class with probability ``neg_prob`` — and ``not_exhaustive`` (C,): with probability
``p_miss`` a present class with at least two instances loses 1..n-1 of them from the
annotation (``labels == -1`` in that slot) and is marked not exhaustive. The full truth
(``truth_labels``) stays for oracle evaluation, and :func:`aux_view` gives the exhaustive
box labels of the frequent classes (P16's auxiliary detection set). :func:`to_lvis` writes
either annotation as an LVIS json dict. Generated on the CPU and cached like
:mod:`kit.data.shapes`.

Long because the generator, the federated annotation and its LVIS export read one slot layout
(truth and annotated labels side by side); split, each part would re-derive it.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torchvision.ops import box_convert

from kit.data import cache
from kit.data.dataset import GeneratedDataset, check_config
from kit.data.shape_drawing import draw_objects, sample_objects
from kit.data.shapes import BLOCK, CLASS_HUES, SHAPES, ShapeSceneConfig

MAX_FAMILIES = 3
GROUPS = ("r", "c", "f")


@dataclass(frozen=True)
class LongTailSceneConfig:
    """Parameters of a long-tailed scene set. Sizes are object extents (longer side) in pixels."""

    num_images: int
    image_size: int = 64
    num_classes: int = 30
    exponent: float = 2.5  # Zipf exponent of the image-level class frequencies
    offset: float = 3.0  # Zipf-Mandelbrot offset (0: pure Zipf)
    top_fraction: float = 0.6  # fraction of images holding class 0
    max_instances: int = 3  # instances of a present class: uniform in 1..max_instances
    max_objects: int = 8  # object slots per image (more objects: random ones are left out)
    min_size: float = 6.0
    max_size: float | None = None  # default: 0.6 * image_size
    neg_prob: float = 0.5  # each absent class is a verified negative with this probability
    p_miss: float = 0.3  # a present class (>= 2 instances) loses some instances with this probability
    count_scale: float | None = None  # LVIS's 10/100 image-count thresholds times this; default num_images / 1000
    texture: float = 0.35
    seed: int = 0

    def __post_init__(self):
        finite = all(math.isfinite(v) for v in (self.exponent, self.offset, self.top_fraction, self.min_size,
                                                 self.neg_prob, self.p_miss, self.texture))
        check_config(self, [
            (finite, "exponent, offset, top_fraction, min_size, neg_prob, p_miss and texture must be finite"),
            (self.num_images >= 1, "num_images must be >= 1"),
            (self.image_size >= 16, "image_size must be >= 16 pixels"),
            (1 <= self.num_classes <= len(SHAPES) * MAX_FAMILIES,
             f"num_classes must be in 1..{len(SHAPES) * MAX_FAMILIES} (10 shapes x 3 hue families)"),
            (self.exponent >= 0, "exponent must be >= 0"),
            (self.offset >= 0, "offset must be >= 0"),
            (0 < self.top_fraction <= 1, "top_fraction must be in (0, 1]"),
            (self.max_instances >= 1, "max_instances must be >= 1"),
            (self.max_objects >= 1, "max_objects must be >= 1"),
            (self.min_size >= 2, "min_size must be >= 2 pixels"),
            (self.resolved_max_size() >= self.min_size, "max_size must be >= min_size"),
            (0 <= self.neg_prob <= 1, "neg_prob must be in [0, 1]"),
            (0 <= self.p_miss <= 1, "p_miss must be in [0, 1]"),
            (self.count_scale is None or (math.isfinite(self.count_scale) and self.count_scale > 0),
             "count_scale must be None or a finite number > 0"),
            (self.texture >= 0, "texture must be >= 0"),
        ])

    def resolved_max_size(self) -> float:
        return float(self.max_size) if self.max_size is not None else 0.6 * self.image_size

    def thresholds(self) -> tuple[float, float]:
        """(rare_max, common_max) image counts: LVIS's 10 and 100 times ``count_scale``."""
        scale = self.count_scale if self.count_scale is not None else self.num_images / 1000
        return 10 * scale, 100 * scale

    def class_probabilities(self) -> torch.Tensor:
        """(C,) probability that an image holds class c (before occlusion and the slot limit)."""
        rank = torch.arange(1, self.num_classes + 1, dtype=torch.float64)
        return self.top_fraction * ((1 + self.offset) / (rank + self.offset)) ** self.exponent


def class_shape_family(num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shape index (C,) and hue family (C,) of each class: shape ``c % 10``, family ``(c // 10 + shape) % F``."""
    c = torch.arange(num_classes)
    families = -(-num_classes // len(SHAPES))
    shape = c % len(SHAPES)
    return shape, (c // len(SHAPES) + shape) % families


def class_names(num_classes: int) -> list[str]:
    shape, family = class_shape_family(num_classes)
    return [f"{SHAPES[s]}-{f}" for s, f in zip(shape.tolist(), family.tolist())]


@dataclass
class LongTailScenes(GeneratedDataset):
    """A long-tailed scene set. Slots are padded to ``max_objects``; ``labels == -1`` is empty.

    images (B, 3, H, W) uint8; boxes (B, K, 4) float xyxy pixels; labels (B, K) long, the
    federated annotation (dropped instances are -1); truth_labels (B, K) long, every visible
    object; areas (B, K) visible area in pixels; neg (B, C) bool verified negatives;
    not_exhaustive (B, C) bool. ``batch`` returns images and per-image annotated boxes and labels.
    """

    config: LongTailSceneConfig
    images: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    truth_labels: torch.Tensor
    areas: torch.Tensor
    neg: torch.Tensor
    not_exhaustive: torch.Tensor

    @property
    def class_names(self) -> list[str]:
        return class_names(self.config.num_classes)

    def targets(self, index: int, truth: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes (M, 4) and labels (M,) of image ``index``: the annotation, or with ``truth`` every object."""
        labels = (self.truth_labels if truth else self.labels)[index]
        return self.boxes[index][labels >= 0], labels[labels >= 0]

    def batch_targets(self, indices: torch.Tensor, device) -> tuple[list, list]:
        pairs = [self.targets(int(i)) for i in indices]
        return [b.to(device) for b, _ in pairs], [l.to(device) for _, l in pairs]

    def presence(self, truth: bool = False) -> torch.Tensor:
        """(B, C) bool: class c is annotated in image i (with ``truth``: present at all)."""
        return _presence(self.truth_labels if truth else self.labels, self.config.num_classes)


def _presence(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, K) labels with -1 padding -> (B, C) bool presence."""
    hit = torch.zeros(labels.shape[0], num_classes + 1, dtype=torch.bool)
    hit.scatter_(1, torch.where(labels >= 0, labels, num_classes), True)
    return hit[:, :num_classes]


# --------------------------------------------------------------------------- drawing


def _shape_config(config: LongTailSceneConfig) -> ShapeSceneConfig:
    """The shapes.py configuration whose object sampling and painting we reuse (all 10 shapes)."""
    return ShapeSceneConfig(num_images=config.num_images, image_size=config.image_size, num_classes=len(SHAPES),
                            min_objects=1, max_objects=config.max_objects, min_size=config.min_size,
                            max_size=config.resolved_max_size(), texture=config.texture, seed=config.seed)


def _layout(config: LongTailSceneConfig, n: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Which slots hold an object (n, K) bool and its class (n, K): Bernoulli(q_c) classes per image
    (at least one, drawn by q if none came up), 1..max_instances instances each, in random slot order."""
    c, m, k = config.num_classes, config.max_instances, config.max_objects
    q = config.class_probabilities().float()
    chosen = torch.rand((n, c), generator=generator) < q  # (n, C)
    fallback = torch.multinomial(q.expand(n, c), 1, generator=generator).flatten()  # (n,)
    empty = ~chosen.any(1)
    chosen[empty, fallback[empty]] = True
    count = torch.randint(1, m + 1, (n, c), generator=generator) * chosen  # (n, C)
    wanted = (torch.arange(m)[None, None] < count[..., None]).reshape(n, c * m)  # (n, C*M)
    klass = torch.arange(c).repeat_interleave(m).expand(n, -1)  # (n, C*M)
    key = torch.rand((n, c * m), generator=generator) - wanted.float()  # wanted first, random order
    order = key.argsort(1)[:, :k]  # (n, min(K, C*M))
    present = torch.zeros((n, k), dtype=torch.bool)
    labels = torch.zeros((n, k), dtype=torch.long)
    present[:, :order.shape[1]] = torch.gather(wanted, 1, order)
    labels[:, :order.shape[1]] = torch.gather(klass, 1, order)
    return present, labels


def _render_block(config: LongTailSceneConfig, n: int, generator) -> dict[str, torch.Tensor]:
    """Draw ``n`` images with shapes.py's machinery; labels are class ids, truth only."""
    shape_config = _shape_config(config)
    present, klass = _layout(config, n, generator)
    objects = sample_objects(shape_config, n, generator, "cpu")
    shape, family = class_shape_family(config.num_classes)
    objects["present"], objects["shape_id"] = present, shape[klass]
    hue = (CLASS_HUES[shape] + family.float() / (int(family.max()) + 1)) % 1  # (C,)
    drawn = draw_objects(shape_config, objects, generator, "cpu", labels=klass, base_hue=hue[klass])
    return dict(images=drawn["images"], boxes=drawn["boxes"], truth_labels=drawn["labels"], areas=drawn["areas"])


def _federate(config: LongTailSceneConfig, truth: torch.Tensor) -> dict[str, torch.Tensor]:
    """The federated annotation of the truth labels (B, K): dropped instances, neg, not_exhaustive."""
    rng = np.random.default_rng([config.seed, 7_919])
    b, c = truth.shape[0], config.num_classes
    present = _presence(truth, c)
    neg = torch.from_numpy(rng.random((b, c)) < config.neg_prob) & ~present
    labels = truth.clone()
    not_exhaustive = torch.zeros((b, c), dtype=torch.bool)
    miss = rng.random((b, c)) < config.p_miss  # drawn for every pair, so the stream does not depend on counts
    for i, cls in zip(*np.nonzero(miss & present.numpy())):
        slots = np.flatnonzero(truth[i].numpy() == cls)
        if len(slots) < 2:
            continue
        drop = rng.choice(slots, size=rng.integers(1, len(slots)), replace=False)
        labels[i, drop] = -1
        not_exhaustive[i, cls] = True
    return dict(labels=labels, neg=neg, not_exhaustive=not_exhaustive)


@contextlib.contextmanager
def _one_thread():
    """Draw on one intra-op thread: the generator's ops are small, and on a busy 2-core machine
    two threads were 10x slower than one (4 s against 0.35 s per 256-image block). The
    previous thread count is restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _generate_tensors(config: LongTailSceneConfig) -> dict[str, torch.Tensor]:
    with _one_thread():
        return _generate_unthreaded(config)


def _generate_unthreaded(config: LongTailSceneConfig) -> dict[str, torch.Tensor]:
    blocks = []
    for block, start in enumerate(range(0, config.num_images, BLOCK)):
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + block + 17)
        blocks.append(_render_block(config, min(BLOCK, config.num_images - start), generator))
    tensors = {key: torch.cat([b[key] for b in blocks]) for key in blocks[0]}
    return {**tensors, **_federate(config, tensors["truth_labels"])}


def generate(config: LongTailSceneConfig, use_cache: bool = True) -> LongTailScenes:
    """Generate (or load from ``data/cache/``) the long-tailed scene set ``config`` describes (CPU)."""
    if not isinstance(config, LongTailSceneConfig):
        raise TypeError(f"config must be a LongTailSceneConfig, got {type(config).__name__}")
    if not use_cache:
        return LongTailScenes(config, **_generate_tensors(config))
    params = {"generator": "longtail", "source": cache.source_hash(__name__), **asdict(config)}
    return LongTailScenes(config, **cache.cached("longtail", params, lambda: _generate_tensors(config)))


# --------------------------------------------------------------------------- groups, views, json


def _check_scenes(scenes, name: str = "scenes") -> None:
    if not isinstance(scenes, LongTailScenes):
        raise TypeError(f"{name} must be LongTailScenes (kit.data.longtail_scenes.generate), got {type(scenes).__name__}")


def image_counts(scenes: LongTailScenes, truth: bool = False) -> torch.Tensor:
    """(C,) long: the number of images in which each class is annotated (``truth``: present)."""
    _check_scenes(scenes)
    return scenes.presence(truth).sum(0)


def class_groups(train: LongTailScenes) -> list[str]:
    """Each class's LVIS group 'r', 'c' or 'f' from the *training* split's annotated image counts and
    its config's thresholds (rare: <= 10 s, common: <= 100 s, frequent: more). A class annotated in
    no training image is called rare (LVIS would leave it out; we keep every class evaluable)."""
    _check_scenes(train, "train")
    rare_max, common_max = train.config.thresholds()
    counts = image_counts(train).tolist()
    return ["r" if n <= rare_max else "c" if n <= common_max else "f" for n in counts]


def _check_frequency(frequency, num_classes: int) -> list[str]:
    if frequency is None or len(frequency) != num_classes or any(g not in GROUPS for g in frequency):
        raise ValueError(f"frequency must be {num_classes} groups, each one of {GROUPS} "
                         f"(class_groups(train_scenes)), got {frequency!r:.200}")
    return list(frequency)


def aux_view(scenes: LongTailScenes, frequency: list[str], groups: tuple = ("f",)) -> LongTailScenes:
    """The same images with exhaustive box labels of the classes in ``groups`` only (default: the
    frequent ones; other objects stay in the images, unlabelled): every annotated class exhaustive,
    ``neg`` = the chosen classes absent from the image. P16's auxiliary detection set."""
    _check_scenes(scenes)
    frequency = _check_frequency(frequency, scenes.config.num_classes)
    if not groups or any(g not in GROUPS for g in groups):
        raise ValueError(f"groups must be a non-empty tuple of {GROUPS}, got {groups!r}")
    keep = torch.tensor([g in groups for g in frequency])  # (C,)
    truth = scenes.truth_labels
    labels = torch.where((truth >= 0) & keep[truth.clamp(min=0)], truth, torch.full_like(truth, -1))
    neg = keep[None] & ~_presence(labels, scenes.config.num_classes)
    return replace(scenes, labels=labels, truth_labels=labels, neg=neg, not_exhaustive=torch.zeros_like(neg))


def to_lvis(scenes: LongTailScenes, frequency: list[str] | None = None, truth: bool = False) -> dict:
    """The set as an LVIS-format dict (image ids are indices, category ids are labels, as in
    :func:`kit.data.shapes.to_coco`).

    ``frequency``: each class's group (default: :func:`class_groups` of ``scenes`` itself — pass the
    training split's groups for a validation split). ``truth=False``: the federated annotation
    (images carry ``neg_category_ids`` and ``not_exhaustive_category_ids``); ``truth=True``: every
    object, every absent class a negative, nothing not exhaustive (oracle evaluation).
    ``image_count`` counts the images of *this* set holding the class in the chosen annotation.
    """
    _check_scenes(scenes)
    num_classes = scenes.config.num_classes
    frequency = _check_frequency(frequency if frequency is not None else class_groups(scenes), num_classes)
    labels = scenes.truth_labels if truth else scenes.labels
    present = _presence(labels, num_classes)
    neg = ~present if truth else scenes.neg
    not_exhaustive = torch.zeros_like(neg) if truth else scenes.not_exhaustive
    size = scenes.config.image_size
    images = [{"id": i, "width": size, "height": size, "file_name": f"{i:06d}.png",
               "neg_category_ids": torch.nonzero(neg[i]).flatten().tolist(),
               "not_exhaustive_category_ids": torch.nonzero(not_exhaustive[i]).flatten().tolist()}
              for i in range(len(scenes))]
    counts = present.sum(0).tolist()
    categories = [{"id": c, "name": name, "frequency": frequency[c], "image_count": counts[c],
                   "instance_count": int((labels == c).sum())} for c, name in enumerate(class_names(num_classes))]
    xywh = box_convert(scenes.boxes, "xyxy", "xywh")  # (B, K, 4)
    annotations = []
    for i, slot in torch.nonzero(labels >= 0).tolist():
        annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(labels[i, slot]),
                            "bbox": xywh[i, slot].tolist(), "area": float(scenes.areas[i, slot]), "iscrowd": 0})
    return {"images": images, "annotations": annotations, "categories": categories}
