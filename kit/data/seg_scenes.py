"""Segmentation scenes: shape scenes as per-pixel class maps, with ignore labels, scale regimes,
appearance styles and label spaces (the segmentation chapter: P23, P24, P33, P36).

The objects are drawn by :mod:`kit.data.shapes` (its shapes, class hues, textured backgrounds,
occlusion); this module turns its visible instance masks into one class map per image and adds
what segmentation studies vary:

- **Class maps** ``targets`` (B, H, W) uint8: 0 = background, 1..C the object classes *of the
  dataset's label space*, and :data:`IGNORE_INDEX` = 255 for pixels that are not scored, as
  Cityscapes' ``ignoreInId`` and VOC's border label (``F.cross_entropy(..., ignore_index=255)``
  and :mod:`kit.eval.seg_metrics` skip them). Two sources of 255, each a config switch:
  ``ignore_band`` (VOC-style: every pixel within ``ignore_band`` pixels, chessboard distance, of a
  class change, so a band ``2 * ignore_band`` wide straddles each edge) and ``unlabeled_fraction``
  (Cityscapes-style void: that fraction of the objects is drawn but labelled 255).
- **Scale regimes** per image (P23: routing cost against object size): each image is drawn
  under one of ``regimes`` (:data:`SCALE_REGIMES`: many small objects, a few large ones, or the
  mixed default), picked per image from the seed; ``regimes`` (B,) and ``object_sizes`` (B,)
  (mean square root of the visible object areas, pixels) record it.
- **Styles** (P33's datasets that look different): a :class:`SegStyle` is a background texture
  amplitude plus a colour transform, haze, blur and noise applied to the painted image;
  :data:`STYLES` names four (``clean``, ``fog``, ``night``, ``warm``).
- **Label spaces** (P33): ``merge`` gives groups of drawn classes one label, ``drop`` sends
  classes to 255 (or background); the labels are then renumbered 1..C' in drawn-class order.
  :meth:`SegSceneConfig.label_table` is the remap table (drawn class id -> label id), and
  ``raw_targets`` keeps the drawn class ids, so a model of one label space can be scored in
  another.

Deterministic from ``seed``: the regime of each image, the sub-scenes of each regime (a
:class:`kit.data.shapes.ShapeSceneConfig` seeded ``seed * 101 + regime``) and the style's noise
and the void objects (a generator seeded ``seed * 7919 + 17``). On the CPU the result is cached
under ``data/cache/`` (:mod:`kit.data.cache`, keyed by the config and this module's source and
the ``kit.data`` modules it uses); on a GPU it is drawn on the device.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import gaussian_blur

from kit.data import cache
from kit.data.dataset import GeneratedDataset, check_config
from kit.data.shapes import SHAPES, ShapeSceneConfig, generate as generate_shapes

IGNORE_INDEX = 255

# Per-image scale regimes: object counts and extents (longer side, as a fraction of image_size).
SCALE_REGIMES = {
    "small": dict(min_objects=6, max_objects=12, min_size=0.06, max_size=0.18),
    "large": dict(min_objects=1, max_objects=3, min_size=0.45, max_size=0.9),
    "mixed": dict(min_objects=2, max_objects=6, min_size=0.08, max_size=0.7),
}

IDENTITY = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


@dataclass(frozen=True)
class SegStyle:
    """An appearance: ``rgb = colour_matrix @ rgb``, then ``(rgb - 0.5) * contrast + 0.5 + brightness``,
    blend ``haze`` of light grey, Gaussian blur of ``blur_sigma`` px, Gaussian noise of std ``noise``."""

    texture: float = 0.35  # background gratings' amplitude (kit.data.shapes' ``texture``)
    colour_matrix: tuple = IDENTITY  # 3x3, row i = output channel i as a mix of the input R, G, B
    contrast: float = 1.0
    brightness: float = 0.0
    haze: float = 0.0  # in [0, 1): fraction of light grey (0.8) blended in
    blur_sigma: float = 0.0
    noise: float = 0.0

    def __post_init__(self):
        matrix = self.colour_matrix
        check_config(self, [
            (isinstance(matrix, (tuple, list)) and len(matrix) == 3 and all(
                isinstance(row, (tuple, list)) and len(row) == 3 for row in matrix), "colour_matrix must be 3x3"),
            (all(math.isfinite(v) for v in (self.texture, self.contrast, self.brightness, self.haze, self.blur_sigma,
                                            self.noise, *(x for row in matrix for x in row))), "values must be finite"),
            (self.texture >= 0 and self.blur_sigma >= 0 and self.noise >= 0, "texture, blur_sigma and noise must be >= 0"),
            (self.contrast > 0, "contrast must be > 0"),
            (0 <= self.haze < 1, "haze must be in [0, 1)"),
        ])


STYLES = {
    "clean": SegStyle(),
    # washed out: half grey, light haze, soft edges, flat background
    "fog": SegStyle(texture=0.15, colour_matrix=tuple(tuple(0.5 * (i == j) + 0.5 / 3 for j in range(3)) for i in range(3)),
                    contrast=0.8, haze=0.35, blur_sigma=1.0, noise=0.01),
    # dark and blue, strong texture, sensor noise
    "night": SegStyle(texture=0.5, colour_matrix=((0.45, 0.05, 0.0), (0.05, 0.5, 0.05), (0.1, 0.15, 0.8)),
                      brightness=-0.03, noise=0.06),
    # hues turned a third of the wheel (R <- G, G <- B, B <- R) and warmed: other colours per class
    "warm": SegStyle(texture=0.6, colour_matrix=((0.15, 0.9, 0.0), (0.0, 0.15, 0.8), (0.75, 0.0, 0.1)),
                     contrast=1.1, blur_sigma=0.6, noise=0.02),
}


@dataclass(frozen=True)
class SegSceneConfig:
    """Parameters of a segmentation-scene set (see the module docstring for each switch).

    ``num_classes`` shapes are drawn (drawn class ids 1..num_classes, 0 = background); ``merge``
    and ``drop`` name drawn class ids. ``style`` is a name in :data:`STYLES` or a :class:`SegStyle`.
    """

    num_images: int
    image_size: int = 64
    num_classes: int = 5
    regimes: tuple = ("mixed",)
    style: object = "clean"
    ignore_band: int = 0
    unlabeled_fraction: float = 0.0
    merge: tuple = ()  # e.g. ((1, 2),): drawn classes 1 and 2 share one label
    drop: tuple = ()  # e.g. (5,): drawn class 5 is labelled ``drop_to``
    drop_to: str = "ignore"  # or "background"
    color_by_class: bool = True
    seed: int = 0

    def __post_init__(self):
        sequence = (tuple, list)
        check_config(self, [
            (isinstance(self.regimes, sequence) and isinstance(self.drop, sequence), "regimes and drop must be tuples"),
            (isinstance(self.merge, sequence) and all(isinstance(group, sequence) for group in self.merge),
             "merge must be a tuple of tuples of drawn classes, e.g. ((1, 2),)"),
        ])
        for name in ("regimes", "drop"):  # lists are fine too; stored as tuples (hashable, cache key)
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "merge", tuple(tuple(group) for group in self.merge))
        drawn = set(range(1, self.num_classes + 1))
        merged = [c for group in self.merge for c in group]
        check_config(self, [
            (self.num_images >= 1, "num_images must be >= 1"),
            (self.image_size >= 16, "image_size must be >= 16 pixels"),
            (1 <= self.num_classes <= len(SHAPES), f"num_classes must be in 1..{len(SHAPES)}"),
            (len(self.regimes) >= 1 and all(r in SCALE_REGIMES for r in self.regimes),
             f"regimes must be a non-empty tuple of {sorted(SCALE_REGIMES)}"),
            (isinstance(self.style, SegStyle) or self.style in STYLES,
             f"style must be a SegStyle or one of {sorted(STYLES)}"),
            (isinstance(self.ignore_band, int) and self.ignore_band >= 0, "ignore_band must be an int >= 0 (pixels)"),
            (0 <= self.unlabeled_fraction < 1, "unlabeled_fraction must be in [0, 1)"),
            (all(len(group) >= 2 for group in self.merge), "each merge group needs >= 2 drawn classes"),
            (set(merged) | set(self.drop) <= drawn, f"merge and drop name drawn classes 1..{self.num_classes}"),
            (len(merged) == len(set(merged)) and not set(merged) & set(self.drop),
             "merge groups must be disjoint and must not contain dropped classes"),
            (len(set(self.drop)) < self.num_classes, "drop must leave at least one class"),
            (self.drop_to in ("ignore", "background"), "drop_to must be 'ignore' or 'background'"),
            (self.seed >= 0, "seed must be >= 0"),
        ])

    def resolved_style(self) -> SegStyle:
        return self.style if isinstance(self.style, SegStyle) else STYLES[self.style]

    def label_table(self) -> list[int]:
        """Remap table: ``table[drawn class id]`` = label id (0 = background, 255 = ignored).

        Labels are numbered 1.. in the order of the drawn classes; a merge group takes the
        number of its first member.
        """
        group_of = {c: group for group in self.merge for c in group}
        table, label_of_group = [0], {}
        for drawn in range(1, self.num_classes + 1):
            if drawn in self.drop:
                table.append(IGNORE_INDEX if self.drop_to == "ignore" else 0)
            elif drawn in group_of:
                group = group_of[drawn]
                label_of_group.setdefault(group, max(t for t in table if t != IGNORE_INDEX) + 1)
                table.append(label_of_group[group])
            else:
                table.append(max(t for t in table if t != IGNORE_INDEX) + 1)
        return table

    @property
    def num_labels(self) -> int:
        """Labels of this label space, background included (a segmenter's output channels)."""
        return max(t for t in self.label_table() if t != IGNORE_INDEX) + 1

    def label_names(self) -> list[str]:
        """Name of each label id 0..num_labels-1: ``background``, shape names, ``a+b`` for a merge."""
        names = [[] for _ in range(self.num_labels)]
        for drawn, label in enumerate(self.label_table()):
            if drawn and label not in (0, IGNORE_INDEX):
                names[label].append(SHAPES[drawn - 1])
        return ["background"] + ["+".join(parts) for parts in names[1:]]


@dataclass
class SegScenes(GeneratedDataset):
    """A generated segmentation set. ``batch`` returns float images (B, 3, H, W) in [0, 1] and
    long class maps (B, H, W) of the label space (255 = ignore).

    images (B, 3, H, W) uint8; targets (B, H, W) uint8 label ids; raw_targets (B, H, W) uint8
    drawn class ids (255 where void or in the ignore band); regimes (B,) long index into
    ``config.regimes``; object_sizes (B,) float, mean sqrt(visible area) of the objects in pixels.
    """

    config: SegSceneConfig
    images: torch.Tensor
    targets: torch.Tensor
    raw_targets: torch.Tensor
    regimes: torch.Tensor
    object_sizes: torch.Tensor

    def batch_targets(self, indices: torch.Tensor, device) -> tuple[torch.Tensor]:
        return (self.targets[indices].to(device).long(),)


# --------------------------------------------------------------------------- drawing


def regime_shapes_config(config: SegSceneConfig, regime: str, num_images: int, seed: int) -> ShapeSceneConfig:
    """The :class:`ShapeSceneConfig` that draws the images of one regime."""
    params, size = SCALE_REGIMES[regime], config.image_size
    return ShapeSceneConfig(
        num_images=num_images, image_size=size, num_classes=config.num_classes,
        min_objects=params["min_objects"], max_objects=params["max_objects"],
        min_size=max(3.0, params["min_size"] * size), max_size=params["max_size"] * size,
        texture=config.resolved_style().texture, color_by_class=config.color_by_class, seed=seed)


def ignore_band_mask(classes: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, H, W) bool: pixels with a different class within ``radius`` px (chessboard distance).

    A window's max and min differ exactly when it holds two classes; max-pooling pads with
    -inf, so the image border is no class change.
    """
    if radius == 0:
        return torch.zeros_like(classes, dtype=torch.bool)
    labels = classes[:, None].float()  # (B, 1, H, W)
    window = 2 * radius + 1
    highest = F.max_pool2d(labels, window, stride=1, padding=radius)
    lowest = -F.max_pool2d(-labels, window, stride=1, padding=radius)
    return (highest != lowest)[:, 0]


def apply_style(images: torch.Tensor, style: SegStyle, generator: torch.Generator) -> torch.Tensor:
    """uint8 images (B, 3, H, W) in the style's appearance (still uint8)."""
    x = images.float() / 255
    matrix = torch.tensor(style.colour_matrix, dtype=x.dtype, device=x.device)  # (3, 3)
    x = torch.einsum("oc,bchw->bohw", matrix, x)
    x = (x - 0.5) * style.contrast + 0.5 + style.brightness
    x = (1 - style.haze) * x + style.haze * 0.8
    if style.blur_sigma > 0:
        kernel = 2 * math.ceil(2 * style.blur_sigma) + 1
        x = gaussian_blur(x, [kernel, kernel], [style.blur_sigma, style.blur_sigma])
    if style.noise > 0:
        x = x + style.noise * torch.randn(x.shape, generator=generator, device=x.device)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def render_regime(config: SegSceneConfig, regime_index: int, num_images: int, generator, device):
    """Images (n, 3, H, W) uint8, drawn class maps (n, H, W) long with 255, object sizes (n,)."""
    shapes_config = regime_shapes_config(config, config.regimes[regime_index], num_images,
                                         config.seed * 101 + regime_index)
    scenes = generate_shapes(shapes_config, device, use_cache=False)  # this module caches the result
    present = scenes.labels >= 0  # (n, K)
    # visible masks are disjoint: the class map is the sum of (class + 1) * mask
    classes = (scenes.masks.long() * (scenes.labels + 1).clamp(min=0)[..., None, None]).sum(1)  # (n, H, W)
    band = ignore_band_mask(classes, config.ignore_band)
    void = present & (torch.rand(present.shape, generator=generator, device=device) < config.unlabeled_fraction)
    classes[(scenes.masks & void[..., None, None]).any(1) | band] = IGNORE_INDEX
    sizes = (scenes.areas.sqrt() * present).sum(1) / present.sum(1).clamp(min=1)  # (n,)
    return apply_style(scenes.images, config.resolved_style(), generator), classes, sizes


def render(config: SegSceneConfig, device) -> dict[str, torch.Tensor]:
    """The tensors of :class:`SegScenes`: regimes drawn per image, each regime's images in place."""
    generator = torch.Generator(device=device).manual_seed(config.seed * 7919 + 17)
    regimes = torch.randint(len(config.regimes), (config.num_images,), generator=generator, device=device)
    size = config.image_size
    images = torch.empty((config.num_images, 3, size, size), dtype=torch.uint8, device=device)
    raw = torch.empty((config.num_images, size, size), dtype=torch.uint8, device=device)
    sizes = torch.empty(config.num_images, device=device)
    for index in range(len(config.regimes)):
        where = torch.nonzero(regimes == index).flatten()
        if len(where):
            images[where], classes, sizes[where] = render_regime(config, index, len(where), generator, device)
            raw[where] = classes.to(torch.uint8)
    table = torch.full((256,), IGNORE_INDEX, dtype=torch.uint8, device=device)
    table[: config.num_classes + 1] = torch.tensor(config.label_table(), dtype=torch.uint8, device=device)
    return dict(images=images, targets=table[raw.long()], raw_targets=raw, regimes=regimes, object_sizes=sizes)


def generate(config: SegSceneConfig, device: torch.device | str = "cpu", use_cache: bool = True) -> SegScenes:
    """Generate (or load from the cache on the CPU) the segmentation scenes ``config`` describes."""
    if not isinstance(config, SegSceneConfig):
        raise TypeError(f"config must be a SegSceneConfig, got {type(config).__name__}")
    device = torch.device(device)
    if device.type != "cpu" or not use_cache:
        return SegScenes(config, **render(config, device))
    params = {"generator": "seg_scenes", "source": cache.source_hash(__name__), **asdict(config)}
    return SegScenes(config, **cache.cached("seg_scenes", params, lambda: render(config, device)))
