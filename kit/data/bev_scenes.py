"""BEV LiDAR scenes with a nuScenes-like long tail (P25, CBGS: Zhu et al. 2019, arXiv 1908.09492).

CBGS is about *class imbalance in driving data*: in nuScenes a car is in nearly every sample, a
bicycle or a construction vehicle in few. These scenes reproduce that at toy scale, in the bird's-eye
view (x forward, y left, metres; yaw counter-clockwise from +x):

- **Ten classes**, in nuScenes' detection order (:data:`CLASSES`), with their mean sizes
  (:data:`SIZES`, width × length × height in metres) and an instance share close to nuScenes'
  (:data:`INSTANCE_SHARE`: car ≫ pedestrian > barrier > traffic cone ≈ truck ≫ trailer, bus,
  construction vehicle, motorcycle, bicycle). Barriers and cones come in rows of 2-5, as on a
  real road works site, so their *sample* frequency is lower than their instance count suggests.
- **Points** on the box faces the sensor (at the origin) can see, heights uniform in [0, h], with a
  density that falls with range (``density * (10 m / r)^2`` points per m² of visible face, at least
  ``min_points`` per object), a class-dependent intensity, and 3 cm noise. No occlusion between objects.
- **Clutter**: ground returns (z ≈ 0) denser near the sensor, and a few vegetation/pole blobs.

A set is stored flat: ``points`` (P, 4) float32 (x, y, z, intensity) of all scenes one after the
other, ``point_offsets`` (N + 1,) long (scene i owns ``points[offsets[i]:offsets[i + 1]]``);
``boxes`` (N, M, 5) float32 (x, y, w, l, yaw) and ``labels`` (N, M) long, padded with label -1;
``box_points`` (N, M) long: points on each box.

Deterministic from ``seed`` (a NumPy generator); cached under ``data/cache/`` (:mod:`kit.data.cache`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from kit.data import cache
from kit.data.dataset import check_config

CLASSES = ("car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle",
           "pedestrian", "traffic_cone")
SIZES = {  # (width, length, height) in metres, nuScenes' mean box per class (approximate)
    "car": (1.95, 4.6, 1.7), "truck": (2.5, 6.9, 2.8), "construction_vehicle": (2.8, 6.4, 3.2),
    "bus": (2.9, 11.0, 3.5), "trailer": (2.9, 12.3, 3.8), "barrier": (2.5, 0.5, 1.0),
    "motorcycle": (0.77, 2.1, 1.5), "bicycle": (0.6, 1.7, 1.3), "pedestrian": (0.67, 0.73, 1.75),
    "traffic_cone": (0.41, 0.41, 1.1),
}
INSTANCE_SHARE = {  # share of all annotated instances (nuScenes train, rounded)
    "car": 0.43, "truck": 0.075, "construction_vehicle": 0.012, "bus": 0.014, "trailer": 0.022,
    "barrier": 0.12, "motorcycle": 0.011, "bicycle": 0.010, "pedestrian": 0.19, "traffic_cone": 0.08,
}
INTENSITY = {  # (mean, std) of the return intensity in [0, 1]: retro-reflective barriers and cones are bright
    "car": (0.35, 0.1), "truck": (0.3, 0.1), "construction_vehicle": (0.45, 0.1), "bus": (0.3, 0.1),
    "trailer": (0.25, 0.1), "barrier": (0.75, 0.1), "motorcycle": (0.4, 0.15), "bicycle": (0.3, 0.15),
    "pedestrian": (0.15, 0.05), "traffic_cone": (0.8, 0.1),
}
ROW_CLASSES = ("barrier", "traffic_cone")  # placed in rows of 2..5
MEAN_ROW = 3.5


@dataclass(frozen=True)
class BEVSceneConfig:
    """A set of ``num_scenes`` scenes in the square ``[-extent, extent]²`` metres around the sensor.

    ``mean_placements``: Poisson mean of placements per scene (a placement is one object, or a row of
    barriers or cones); ``density``: points per m² of visible face at 10 m; ``ground_points`` and
    ``clutter_blobs``: the clutter (mean counts per scene).
    """

    num_scenes: int
    extent: float = 32.0
    mean_placements: float = 8.0
    density: float = 10.0
    min_points: int = 3
    ground_points: int = 400
    clutter_blobs: float = 4.0
    seed: int = 0

    def __post_init__(self):
        finite = all(math.isfinite(v) for v in (self.extent, self.mean_placements, self.density, self.clutter_blobs))
        check_config(self, [
            (isinstance(self.num_scenes, int) and self.num_scenes >= 1, "num_scenes must be an int >= 1"),
            (finite, "extent, mean_placements, density and clutter_blobs must be finite"),
            (self.extent >= 8, "extent must be >= 8 metres"),
            (self.mean_placements > 0 and self.density > 0, "mean_placements and density must be > 0"),
            (isinstance(self.min_points, int) and self.min_points >= 1, "min_points must be an int >= 1"),
            (isinstance(self.ground_points, int) and self.ground_points >= 0, "ground_points must be an int >= 0"),
            (self.clutter_blobs >= 0, "clutter_blobs must be >= 0"),
            (isinstance(self.seed, int) and self.seed >= 0, "seed must be an int >= 0"),
        ])


@dataclass
class BEVScenes:
    """A generated BEV set (see the module docstring for the fields)."""

    config: BEVSceneConfig
    points: torch.Tensor  # (P, 4) float32
    point_offsets: torch.Tensor  # (N + 1,) long
    boxes: torch.Tensor  # (N, M, 5) float32
    labels: torch.Tensor  # (N, M) long, -1 = padding
    box_points: torch.Tensor  # (N, M) long

    def __len__(self) -> int:
        return self.labels.shape[0]

    def _checked(self, indices, allow_empty: bool = False) -> torch.Tensor:
        indices = torch.as_tensor(indices).cpu()
        if indices.numel() == 0:
            indices = indices.long().reshape(0)
        if indices.dim() != 1 or indices.is_floating_point() or indices.dtype == torch.bool:
            raise ValueError(f"indices must be a 1-D sequence of int scene ids, got {indices.dtype} {tuple(indices.shape)}")
        if not allow_empty and len(indices) == 0:
            raise ValueError("a batch needs at least one scene index")
        if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= len(self)):
            raise IndexError(f"scene indices must be in [0, {len(self)}), got [{int(indices.min())}, {int(indices.max())}]")
        return indices.long()

    def scene_points(self, index: int) -> torch.Tensor:
        """(P_i, 4) points of scene ``index``."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self):
            raise IndexError(f"scene index must be an int in [0, {len(self)}), got {index!r}")
        return self.points[self.point_offsets[index]:self.point_offsets[index + 1]]

    def presence(self) -> torch.Tensor:
        """(N, C) bool: which classes each scene contains (the sample membership DS sampling uses)."""
        valid = self.labels >= 0
        onehot = torch.nn.functional.one_hot(self.labels.clamp(min=0), len(CLASSES)) & valid[..., None]
        return onehot.any(1)

    def instance_counts(self) -> torch.Tensor:
        """(C,) long: instances per class over the set."""
        return torch.bincount(self.labels[self.labels >= 0], minlength=len(CLASSES))

    def subset(self, indices) -> "BEVScenes":
        """The scenes ``indices`` (in that order, repeats allowed), same config."""
        indices = self._checked(indices, allow_empty=True)
        starts, ends = self.point_offsets[indices], self.point_offsets[indices + 1]
        points = torch.cat([self.points[s:e] for s, e in zip(starts.tolist(), ends.tolist())]) if len(indices) else \
            self.points[:0]
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), (ends - starts).cumsum(0)])
        return BEVScenes(self.config, points, offsets, self.boxes[indices], self.labels[indices],
                         self.box_points[indices])

    def batch(self, indices, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scenes ``indices`` for a detector: points (P, 4), batch_index (P,) long, boxes (B, M, 5), labels (B, M)."""
        indices = self._checked(indices)
        starts, ends = self.point_offsets[indices].tolist(), self.point_offsets[indices + 1].tolist()
        points = torch.cat([self.points[s:e] for s, e in zip(starts, ends)])
        batch_index = torch.repeat_interleave(torch.arange(len(indices)), torch.tensor(ends) - torch.tensor(starts))
        return (points.to(device), batch_index.to(device), self.boxes[indices].to(device),
                self.labels[indices].to(device))

    def to(self, device) -> "BEVScenes":
        return BEVScenes(self.config, *(getattr(self, n).to(device) for n in
                                        ("points", "point_offsets", "boxes", "labels", "box_points")))


# --------------------------------------------------------------------------- drawing one scene


def box_corners(x: float, y: float, w: float, l: float, yaw: float) -> np.ndarray:
    """(4, 2) corners, counter-clockwise: front-left, rear-left, rear-right, front-right."""
    if not all(math.isfinite(float(v)) for v in (x, y, w, l, yaw)) or not (w > 0 and l > 0):
        raise ValueError(f"a box needs finite x, y, yaw and width, length > 0 (metres), got {(x, y, w, l, yaw)}")
    c, s = math.cos(yaw), math.sin(yaw)
    local = np.array([[l / 2, w / 2], [-l / 2, w / 2], [-l / 2, -w / 2], [l / 2, -w / 2]])  # (4, 2) in the box frame
    return local @ np.array([[c, s], [-s, c]]) + np.array([x, y])


def _face_points(box: tuple, height: float, density: float, min_points: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) points (x, y, z) on the faces of ``box`` (x, y, w, l, yaw) that face the sensor at the origin."""
    corners = box_corners(*box)
    starts, ends = corners, np.roll(corners, -1, axis=0)  # (4, 2) each: the 4 side faces
    edges = ends - starts
    normals = np.stack([edges[:, 1], -edges[:, 0]], 1)  # outward for counter-clockwise corners
    visible = (normals * (starts + ends) / 2).sum(1) < 0  # the face looks towards the origin
    lengths = np.linalg.norm(edges, axis=1) * visible
    distance = max(math.hypot(box[0], box[1]), 3.0)
    count = max(min_points, int(rng.poisson(density * (10.0 / distance) ** 2 * lengths.sum() * height)))
    face = rng.choice(4, size=count, p=lengths / lengths.sum())  # (n,)
    t = rng.random(count)[:, None]
    xy = starts[face] + t * edges[face]  # (n, 2)
    z = rng.random(count) * height
    return np.concatenate([xy, z[:, None]], 1) + rng.normal(0, 0.03, (count, 3))


def _place_objects(config: BEVSceneConfig, rng: np.random.Generator) -> tuple[list, list]:
    """Boxes (x, y, w, l, yaw) and class ids of one scene, without overlaps (discs around each box)."""
    weights = np.array([INSTANCE_SHARE[c] / (MEAN_ROW if c in ROW_CLASSES else 1) for c in CLASSES])
    boxes, labels, discs = [], [], []  # discs: (x, y, radius)
    margin = config.extent - 1.0
    for _ in range(rng.poisson(config.mean_placements)):
        label = int(rng.choice(len(CLASSES), p=weights / weights.sum()))
        name = CLASSES[label]
        w, l, _ = SIZES[name]
        road = rng.choice([0.0, math.pi / 2]) + rng.normal(0, 0.1)  # vehicles follow one of two road directions
        yaw = float(rng.uniform(-math.pi, math.pi)) if name in ("pedestrian", "traffic_cone") else float(road)
        count = int(rng.integers(2, 6)) if name in ROW_CLASSES else 1
        x0, y0 = rng.uniform(-margin, margin, 2)
        radius = math.hypot(w, l) / 2 + 0.2
        step = 2 * radius + 0.05  # a row runs across the heading (a barrier's long side)
        for k in range(count):
            x, y = x0 - k * step * math.sin(yaw), y0 + k * step * math.cos(yaw)
            inside = abs(x) < margin and abs(y) < margin and math.hypot(x, y) > radius + 2.0  # sensor outside
            if inside and all(math.hypot(x - a, y - b) > radius + r for a, b, r in discs):
                boxes.append((float(x), float(y), w, l, yaw))
                labels.append(label)
                discs.append((x, y, radius))
    return boxes, labels


def _clutter(config: BEVSceneConfig, rng: np.random.Generator) -> np.ndarray:
    """(n, 4) ground returns (denser near the sensor) and vegetation/pole blobs, with intensities."""
    radius = config.extent * np.sqrt(rng.random(config.ground_points)) ** 2  # area density ~ 1/r
    angle = rng.uniform(-math.pi, math.pi, config.ground_points)
    ground = np.stack([radius * np.cos(angle), radius * np.sin(angle), rng.normal(0, 0.05, config.ground_points),
                       rng.uniform(0.0, 0.2, config.ground_points)], 1)
    blobs = []
    for _ in range(rng.poisson(config.clutter_blobs)):
        centre, size, height = rng.uniform(-config.extent, config.extent, 2), rng.uniform(0.2, 1.5), rng.uniform(0.5, 3)
        n = int(rng.integers(8, 40))
        xy = centre + rng.normal(0, size / 2, (n, 2))
        blobs.append(np.concatenate([xy, rng.random((n, 1)) * height, rng.uniform(0.05, 0.5, (n, 1))], 1))
    points = np.concatenate([ground, *blobs]) if blobs else ground
    inside = (np.abs(points[:, :2]) < config.extent).all(1)
    return points[inside]


def _draw_scene(config: BEVSceneConfig, rng: np.random.Generator) -> tuple[np.ndarray, list, list, list]:
    """Points (P, 4), boxes, labels and points per box of one scene."""
    boxes, labels = _place_objects(config, rng)
    parts, counts = [_clutter(config, rng)], []
    for box, label in zip(boxes, labels):
        name = CLASSES[label]
        xyz = _face_points(box, SIZES[name][2], config.density, config.min_points, rng)
        mean, std = INTENSITY[name]
        intensity = np.clip(rng.normal(mean, std, (len(xyz), 1)), 0, 1)
        parts.append(np.concatenate([xyz, intensity], 1))
        counts.append(len(xyz))
    return np.concatenate(parts).astype(np.float32), boxes, labels, counts


def _render(config: BEVSceneConfig) -> dict[str, torch.Tensor]:
    """All scenes of ``config`` as the flat tensors of :class:`BEVScenes`."""
    rng = np.random.default_rng(config.seed)
    scenes = [_draw_scene(config, rng) for _ in range(config.num_scenes)]
    most = max(1, max(len(s[2]) for s in scenes))
    boxes = torch.zeros(config.num_scenes, most, 5)
    labels = torch.full((config.num_scenes, most), -1, dtype=torch.long)
    box_points = torch.zeros(config.num_scenes, most, dtype=torch.long)
    for i, (_, scene_boxes, scene_labels, counts) in enumerate(scenes):
        if scene_boxes:
            boxes[i, :len(scene_boxes)] = torch.tensor(scene_boxes)
            labels[i, :len(scene_labels)] = torch.tensor(scene_labels)
            box_points[i, :len(counts)] = torch.tensor(counts)
    sizes = torch.tensor([len(s[0]) for s in scenes])
    return {"points": torch.from_numpy(np.concatenate([s[0] for s in scenes])),
            "point_offsets": torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)]),
            "boxes": boxes, "labels": labels, "box_points": box_points}


def generate(config: BEVSceneConfig, use_cache: bool = True) -> BEVScenes:
    """Generate (or load from the cache) the scenes ``config`` describes (on the CPU; ``.to(device)`` after)."""
    if not isinstance(config, BEVSceneConfig):
        raise TypeError(f"config must be a BEVSceneConfig, got {type(config).__name__}")
    if not use_cache:
        return BEVScenes(config, **_render(config))
    params = {"generator": "bev_scenes", "source": cache.source_hash(__name__), **asdict(config)}
    return BEVScenes(config, **cache.cached("bev_scenes", params, lambda: _render(config)))
