import pytest
import torch
from torchvision.ops import box_iou

from kit.det.boxes import bbox2distance, centerness_target, distance2bbox, paired_iou, points_inside
from kit.det.priors import point_priors


def random_boxes(n, size=64.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size * 0.7
    wh = torch.rand(n, 2, generator=g) * size * 0.3 + 1
    return torch.cat([xy, xy + wh], 1)


def test_encode_decode_round_trip():
    boxes = random_boxes(50)
    points = torch.rand(50, 2) * 64
    assert torch.allclose(distance2bbox(points, bbox2distance(points, boxes)), boxes, atol=1e-5)
    distances = torch.rand(50, 4) * 10
    assert torch.allclose(bbox2distance(points, distance2bbox(points, distances)), distances, atol=1e-5)


def test_points_inside_and_margin():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    points = torch.tensor([[5.0, 5.0], [10.0, 5.0], [9.995, 5.0], [9.9, 9.9], [-1.0, 5.0]])
    assert points_inside(points, boxes)[:, 0].tolist() == [True, False, False, True, False]


def test_centerness_is_one_at_the_centre_and_zero_on_the_border():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0]] * 3)
    points = torch.tensor([[5.0, 10.0], [0.0, 10.0], [2.5, 10.0]])
    c = centerness_target(points, boxes)
    assert torch.allclose(c, torch.tensor([1.0, 0.0, (2.5 / 7.5) ** 0.5]))


def test_paired_iou_is_the_diagonal_of_box_iou():
    a, b = random_boxes(20, seed=1), random_boxes(20, seed=2)
    assert torch.allclose(paired_iou(a, b), box_iou(a, b).diagonal(), atol=1e-6)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        distance2bbox(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="same shape"):
        paired_iou(torch.zeros(3, 4), torch.zeros(2, 4))


def test_point_priors_layout():
    priors = point_priors([(4, 6), (2, 3)], [8, 16])
    assert priors.points.shape == (24 + 6, 2) and priors.num_per_level == [24, 6]
    assert priors.points[0].tolist() == [4.0, 4.0] and priors.points[1].tolist() == [12.0, 4.0]  # row-major
    assert priors.points[24].tolist() == [8.0, 8.0]
    assert priors.strides[:24].eq(8).all() and priors.levels[24:].eq(1).all()
    anchors = priors.anchor_boxes(4.0)
    assert anchors[0].tolist() == [-12.0, -12.0, 20.0, 20.0]
    with pytest.raises(ValueError, match="one stride per level"):
        point_priors([(4, 4)], [8, 16])


def test_doubly_inverted_boxes_overlap_nothing_and_ground_truth_refuses_them():
    """x2 < x1 and y2 < y1 gives a positive w * h; the IoU must still be 0, as torchvision's."""
    from kit.det.validation import check_gt

    inverted = torch.tensor([[10.0, 10.0, 0.0, 0.0]])
    upright = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert paired_iou(inverted, inverted).item() == 0 == box_iou(inverted, inverted).item()
    assert paired_iou(inverted, upright).item() == 0
    with pytest.raises(ValueError, match="inverted"):
        check_gt([inverted], [torch.tensor([0])], 1, 3)


def test_level_maps_put_every_prior_back_at_its_cell():
    priors = point_priors([(4, 6), (2, 3)], [8, 16])
    maps = priors.level_maps(priors.points)  # each cell holds its own point
    assert [tuple(m.shape) for m in maps] == [(4, 6, 2), (2, 3, 2)]
    row, col = 2, 5
    assert maps[0][row, col].tolist() == [(col + 0.5) * 8, (row + 0.5) * 8]
    assert maps[1][1, 0].tolist() == [8.0, 24.0]
