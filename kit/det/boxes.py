"""Box utilities. Boxes are xyxy in pixels unless a name says otherwise.

IoU, GIoU, areas and format conversion come from :mod:`torchvision.ops` (re-exported here).
What is written here is what torchvision lacks: the point-distance box coding of anchor-free
detectors (FCOS, ATSS-anchor-free, TOOD) — a box coded at a point as its distances to the four
sides, ``ltrb`` = (left, top, right, bottom) — with the FCOS centre-ness and the inside-a-box
test built on it, box centres, and the IoU of matched pairs (:func:`paired_iou`, the diagonal of
``box_iou`` without its N x M cost; 0 for inverted boxes, as ``box_iou``).
"""
from __future__ import annotations

import torch
from torchvision.ops import box_area, box_convert, box_iou, generalized_box_iou  # noqa: F401  re-exported

__all__ = ["box_iou", "generalized_box_iou", "box_area", "box_convert", "centers",
           "distance2bbox", "bbox2distance", "points_inside", "centerness_target", "paired_iou"]


def _check_boxes(name: str, boxes: torch.Tensor) -> None:
    if boxes.dim() < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (..., 4) in xyxy, got {tuple(boxes.shape)}")


def centers(boxes: torch.Tensor) -> torch.Tensor:
    """Box centres (..., 2) as xy."""
    _check_boxes("boxes", boxes)
    return (boxes[..., :2] + boxes[..., 2:]) / 2


def distance2bbox(points: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """Decode ltrb distances (..., 4) at points (..., 2) into xyxy boxes (..., 4)."""
    if points.shape[-1] != 2:
        raise ValueError(f"points must have shape (..., 2) as xy, got {tuple(points.shape)}")
    _check_boxes("distances", distances)
    x, y = points[..., 0], points[..., 1]
    return torch.stack([x - distances[..., 0], y - distances[..., 1],
                        x + distances[..., 2], y + distances[..., 3]], dim=-1)


def bbox2distance(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Encode xyxy boxes (..., 4) as ltrb distances (..., 4) from points (..., 2).

    Distances are negative for sides the point lies outside of; the inverse of
    :func:`distance2bbox` for any point.
    """
    if points.shape[-1] != 2:
        raise ValueError(f"points must have shape (..., 2) as xy, got {tuple(points.shape)}")
    _check_boxes("boxes", boxes)
    x, y = points[..., 0], points[..., 1]
    return torch.stack([x - boxes[..., 0], y - boxes[..., 1],
                        boxes[..., 2] - x, boxes[..., 3] - y], dim=-1)


def points_inside(points: torch.Tensor, boxes: torch.Tensor, margin: float = 0.01) -> torch.Tensor:
    """(N, M) bool: point n lies inside box m by more than ``margin`` pixels on every side.

    points: (N, 2) xy; boxes: (M, 4) xyxy. The 0.01 default is mmdetection's.
    """
    distances = bbox2distance(points[:, None, :], boxes[None, :, :])  # (N, M, 4)
    return distances.min(dim=-1).values > margin


def centerness_target(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """FCOS centre-ness sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) of each point in its box.

    points: (N, 2); boxes: (N, 4) (one box per point). Points outside their box give 0.
    """
    ltrb = bbox2distance(points, boxes).clamp(min=0)  # (N, 4)
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    ratio = (lr.min(-1).values / lr.max(-1).values.clamp(min=1e-6)) * (
        tb.min(-1).values / tb.max(-1).values.clamp(min=1e-6))
    return ratio.sqrt()


def paired_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of matched pairs (N, 4) x (N, 4) -> (N,); the diagonal of ``box_iou`` without the N^2 cost."""
    _check_boxes("boxes1", boxes1)
    _check_boxes("boxes2", boxes2)
    if boxes1.shape != boxes2.shape:
        raise ValueError(f"paired boxes must have the same shape, got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}")
    top_left = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    union = box_area(boxes1) + box_area(boxes2) - inter
    return inter / union.clamp(min=1e-6)
