"""kit.det.bev_detector, kit.det.grouped_heads, kit.det.center_heatmap: pillars, grouped heads, targets, decoding."""
import math

import torch

from kit.det.bev_detector import BEVDetector, BEVGrid, PillarEncoder
from kit.det.center_heatmap import center_targets, decode, focal_heatmap_loss, grouped_loss
from kit.det.grouped_heads import CBGS_GROUPS, GroupedHeads, TaskHead, check_groups, global_labels

GRID = BEVGrid(16.0, 16)


def test_groups_partition_the_classes():
    groups = check_groups(CBGS_GROUPS, 10)
    flat = [c for g in groups for c in g]
    assert sorted(flat) == list(range(10)) and len(flat) == len(set(flat))


def test_one_group_head_equals_single_head():
    torch.manual_seed(0)
    features = torch.randn(2, 12, 5, 7)
    single = TaskHead(12, 10)
    grouped = GroupedHeads(12, 10, (tuple(range(10)),))
    grouped.heads[0].load_state_dict(single.state_dict())
    heat, box = single(features)
    heat_g, box_g = grouped(features)
    assert torch.equal(heat, heat_g) and torch.equal(box, box_g[:, 0])


def test_grouped_heat_in_global_class_order():
    torch.manual_seed(1)
    features = torch.randn(1, 8, 4, 4)
    groups = ((3, 0), (1,), (2,))
    heads = GroupedHeads(8, 4, groups)
    heat, box = heads(features)
    assert box.shape == (1, 3, 6, 4, 4)
    own = heads.heads[0](features)[0]  # channels of classes 3 and 0
    assert torch.equal(heat[:, 3], own[:, 0]) and torch.equal(heat[:, 0], own[:, 1])


def test_merged_labels_unique_after_offset():
    for groups in (CBGS_GROUPS, ((4, 2), (0, 1, 3)), (tuple(range(10)),)):
        merged = torch.cat(global_labels(groups))
        assert len(torch.unique(merged)) == len(merged) == sum(len(g) for g in groups)


def test_pillars_take_the_max_per_cell():
    encoder = PillarEncoder(GRID, 4)
    points = torch.tensor([[0.2, 0.2, 0.0, 0.5], [0.6, 0.7, 1.0, 0.1], [-10.0, 5.0, 0.5, 0.5], [100.0, 0.0, 0.0, 0.0]])
    batch_index = torch.tensor([0, 0, 1, 1])
    bev = encoder(points, batch_index, 2)  # (2, 5, 16, 16); the last point is outside the grid
    assert bev.shape == (2, 5, 16, 16)
    i, j = 8, 8  # x, y in [0, 2) m
    coords = GRID.cell_coordinates(points[:2, :2])
    features = torch.cat([coords - coords.floor() - 0.5, points[:2, 2:3] / 2, points[:2, 3:4], points[:2, :2] / 16], 1)
    assert torch.allclose(bev[0, :4, i, j], encoder.mlp(features).max(0).values)
    assert math.isclose(float(bev[0, 4, i, j]), math.log1p(2), rel_tol=1e-6)
    assert int((bev[:, 4] > 0).sum()) == 2  # two occupied pillars


def test_targets_peak_at_centres_and_box_codes():
    boxes = torch.tensor([[[1.3, -2.6, 2.0, 4.0, 0.5], [0.0, 0.0, 1.0, 1.0, 0.0]]])
    labels = torch.tensor([[2, -1]])
    t = center_targets(boxes, labels, GRID, 4)
    assert t["heat"].shape == (1, 4, 16, 16) and float(t["heat"].max()) == 1.0
    assert (int(t["i"][0]), int(t["j"][0])) == (8, 6) and float(t["heat"][0, 2, 8, 6]) == 1.0
    assert float(t["heat"][0, [0, 1, 3]].sum()) == 0
    assert torch.allclose(t["box"][0], torch.tensor([0.65, 0.7, math.log(2), math.log(4), math.sin(0.5), math.cos(0.5)]))


def test_decode_recovers_perfect_maps():
    boxes = torch.tensor([[[1.3, -2.6, 2.0, 4.0, 0.5], [-7.0, 9.0, 0.5, 0.5, -1.0]]])
    labels = torch.tensor([[2, 0]])
    t = center_targets(boxes, labels, GRID, 4)
    groups = ((0, 1), (2, 3))
    heat = torch.logit(t["heat"].clamp(1e-4, 1 - 1e-4))
    box_maps = torch.zeros(1, 2, 6, 16, 16)
    for k, g in enumerate([0, 1]):  # object k's task: class 2 -> task 1, class 0 -> task 0
        task = 1 if int(t["label"][k]) == 2 else 0
        box_maps[0, task, :, t["i"][k], t["j"][k]] = t["box"][k]
    detections = decode(heat, box_maps, groups, GRID, per_class=3, min_score=0.5)[0]
    assert sorted(detections["label"].tolist()) == [0, 2]
    for xy, label in zip(detections["xy"], detections["label"]):
        truth = boxes[0, (labels[0] == label).nonzero()[0, 0]]
        assert torch.allclose(xy, truth[:2], atol=1e-5)


def test_one_group_loss_is_the_single_loss_and_grouped_normalises_per_task():
    torch.manual_seed(2)
    boxes = torch.tensor([[[1.0, 1.0, 2.0, 4.0, 0.0], [5.0, -5.0, 0.7, 0.7, 0.0], [-3.0, 4.0, 0.7, 0.7, 0.0]]])
    labels = torch.tensor([[0, 1, 1]])
    t = center_targets(boxes, labels, GRID, 2)
    heat = torch.randn(1, 2, 16, 16)
    box_maps = torch.randn(1, 1, 6, 16, 16)
    one = grouped_loss(heat, box_maps, t, ((0, 1),))
    per_class = focal_heatmap_loss(heat, t["heat"])
    assert torch.allclose(one["heat 0"], per_class.sum() / 3)
    two = grouped_loss(heat, box_maps.expand(1, 2, 6, 16, 16), t, ((0,), (1,)))
    assert torch.allclose(two["heat 0"], per_class[0] / 1) and torch.allclose(two["heat 1"], per_class[1] / 2)


def test_detector_runs_and_backbone_init_is_shared():
    torch.manual_seed(0)
    single = BEVDetector(GRID, 10)
    torch.manual_seed(0)
    grouped = BEVDetector(GRID, 10, CBGS_GROUPS)
    for a, b in zip(single.backbone.parameters(), grouped.backbone.parameters()):
        assert torch.equal(a, b)
    points = torch.randn(50, 4) * 4
    heat, box = grouped(points, torch.zeros(50, dtype=torch.long), 1)
    assert heat.shape == (1, 10, 16, 16) and box.shape == (1, 6, 6, 16, 16)
