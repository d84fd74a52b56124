"""kit.data.bev_scenes: deterministic, long-tailed BEV scenes with points on the boxes' visible faces."""
import math

import numpy as np
import torch

from kit.data.bev_scenes import CLASSES, INSTANCE_SHARE, BEVSceneConfig, box_corners, generate

CONFIG = BEVSceneConfig(300, seed=11)


def scenes():
    return generate(CONFIG, use_cache=False)


def test_deterministic_and_cached(tmp_path, monkeypatch):
    a, b = scenes(), scenes()
    for name in ("points", "point_offsets", "boxes", "labels", "box_points"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    monkeypatch.setenv("KIT_ROOT", str(tmp_path))
    cached = generate(BEVSceneConfig(20, seed=3))
    again = generate(BEVSceneConfig(20, seed=3))
    assert torch.equal(cached.points, again.points) and list((tmp_path / "data" / "cache").glob("bev_scenes-*.pt"))


def test_long_tail_order():
    counts = scenes().instance_counts()
    index = {name: i for i, name in enumerate(CLASSES)}
    assert counts[index["car"]] > counts[index["pedestrian"]] > counts[index["barrier"]]
    rare = [index[n] for n in ("trailer", "bus", "construction_vehicle", "motorcycle", "bicycle")]
    assert counts[index["truck"]] > 2 * counts[rare].max()
    assert counts[index["car"]] > 10 * counts[rare].max()
    assert sorted(INSTANCE_SHARE) == sorted(CLASSES)


def test_points_lie_on_visible_faces_and_counts_match():
    s = scenes()
    for i in range(20):
        valid = s.labels[i] >= 0
        assert s.point_offsets[i + 1] - s.point_offsets[i] >= int(s.box_points[i][valid].sum())
        assert bool((s.box_points[i][valid] >= CONFIG.min_points).all())
        assert bool((s.box_points[i][~valid] == 0).all())
    points = s.scene_points(0)
    assert points.shape[1] == 4 and bool(torch.isfinite(points).all())
    assert bool(((points[:, 3] >= 0) & (points[:, 3] <= 1)).all())


def test_boxes_inside_and_without_overlap():
    s = scenes()
    for i in range(50):
        boxes = s.boxes[i][s.labels[i] >= 0]
        assert bool((boxes[:, :2].abs() < CONFIG.extent).all())
        centres = boxes[:, :2]
        radius = boxes[:, 2:4].norm(dim=1) / 2
        d = torch.cdist(centres, centres) + torch.eye(len(boxes)) * 1e9
        assert bool((d > radius[:, None] + radius[None, :]).all())


def test_presence_is_sample_membership():
    s = scenes()
    presence = s.presence()
    for i in range(30):
        expected = set(s.labels[i][s.labels[i] >= 0].tolist())
        assert set(presence[i].nonzero().flatten().tolist()) == expected


def test_corners_counter_clockwise_and_rotated():
    corners = box_corners(1.0, 2.0, 2.0, 4.0, math.pi / 2)  # heading +y: the length runs along y
    assert np.allclose(corners[0], [1.0 - 1.0, 2.0 + 2.0])
    x, y = corners[:, 0], corners[:, 1]
    assert 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) > 0  # positive signed area


def test_subset_and_batch():
    s = scenes()
    sub = s.subset([3, 3, 1])
    assert len(sub) == 3 and torch.equal(sub.scene_points(0), s.scene_points(3)) and torch.equal(sub.boxes[2], s.boxes[1])
    points, batch_index, boxes, labels = s.batch([1, 4])
    assert len(points) == len(s.scene_points(1)) + len(s.scene_points(4))
    assert batch_index.tolist() == [0] * len(s.scene_points(1)) + [1] * len(s.scene_points(4))
    assert boxes.shape[0] == labels.shape[0] == 2
