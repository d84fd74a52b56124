"""Centre-heatmap targets, per-task losses and decoding for BEV boxes (the P25 detector's head side).

CenterNet / CenterPoint style: each object is a Gaussian peak at its centre cell in its class's
heatmap; the box branch regresses, at the centre cell only, the sub-cell offset, log width and
length, and (sin, cos) of the yaw. The heatmap loss is the penalty-reduced focal loss of CornerNet.

Per *task* (a group of :mod:`kit.det.grouped_heads`), as Det3D's ``MultiGroupHead`` does: the
heatmap loss over the task's channels and the box loss over the task's objects are both divided by
the task's own number of objects, and the task losses are summed. With one task this is the usual
single-head loss. Decoding takes, per task, the local maxima (3x3) of each class's heatmap, maps the
task-local class to the global one (the merge's label offset), and keeps no cross-task NMS.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kit.det.bev_detector import BEVGrid
from kit.det.grouped_heads import REGRESSION, check_groups, global_labels


def check_boxes(boxes: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 3 or boxes.shape[-1] != 5:
        raise ValueError(f"boxes must be (B, M, 5) (x, y, w, l, yaw), got "
                         f"{tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__}")
    if not boxes.is_floating_point():
        raise TypeError(f"boxes must be float (metres), got {boxes.dtype}")
    if not isinstance(labels, torch.Tensor) or labels.shape != boxes.shape[:2] or labels.dtype != torch.long:
        raise ValueError(f"labels must be (B, M) long matching boxes, got "
                         f"{getattr(labels, 'shape', type(labels).__name__)} {getattr(labels, 'dtype', '')}")
    valid = labels >= 0
    if bool((labels[valid] >= num_classes).any()) or bool((labels < -1).any()):
        raise ValueError(f"labels must be class ids in [0, {num_classes}) or -1 (padding)")
    if not bool(torch.isfinite(boxes[valid]).all()) or bool((boxes[valid][:, 2:4] <= 0).any()):
        raise ValueError("boxes must be finite with width and length > 0")


def check_maps(heat_logits: torch.Tensor, box_maps: torch.Tensor, groups) -> None:
    """heat (B, C, H, W) and box maps (B, G, 6, H, W) of one batch, G = len(groups), C classes in the groups."""
    if not isinstance(heat_logits, torch.Tensor) or heat_logits.dim() != 4:
        raise ValueError(f"heat_logits must be (B, C, H, W), got {getattr(heat_logits, 'shape', type(heat_logits).__name__)}")
    groups = check_groups(groups, heat_logits.shape[1])
    b, _, h, w = heat_logits.shape
    if not isinstance(box_maps, torch.Tensor) or tuple(box_maps.shape) != (b, len(groups), REGRESSION, h, w):
        raise ValueError(f"box_maps must be (B, G, 6, H, W) = {(b, len(groups), REGRESSION, h, w)} for these heatmaps "
                         f"and {len(groups)} tasks, got {getattr(box_maps, 'shape', type(box_maps).__name__)}")


def center_targets(boxes: torch.Tensor, labels: torch.Tensor, grid: BEVGrid, num_classes: int,
                   min_radius: int = 1) -> dict:
    """Heatmap targets (B, C, H, W) and, per object inside the grid, its cell and box targets.

    boxes (B, M, 5), labels (B, M) (-1 = padding). Returns ``heat`` (B, C, H, W); ``batch``,
    ``label``, ``i``, ``j`` (K,) long; ``box`` (K, 6): offset x, offset y, log w, log l, sin, cos.
    The Gaussian of an object has sigma = (2r + 1) / 6 cells, r = max(min_radius, 0.25 * min(w, l) / cell).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    check_boxes(boxes, labels, num_classes)
    cells = grid.cells
    batch, slot = (labels >= 0).nonzero(as_tuple=True)  # (K,) each
    box, label = boxes[batch, slot], labels[batch, slot]  # (K, 5), (K,)
    coords = grid.cell_coordinates(box[:, :2])  # (K, 2)
    inside = ((coords >= 0) & (coords < cells)).all(1)
    batch, box, label, coords = batch[inside], box[inside], label[inside], coords[inside]
    cell = coords.floor().long()  # (K, 2)
    radius = (0.25 * box[:, 2:4].min(1).values / grid.cell).floor().clamp(min=min_radius)  # (K,)
    sigma = (2 * radius + 1) / 6
    axis = torch.arange(cells, device=boxes.device, dtype=boxes.dtype)
    dx = (axis[None, :] - cell[:, :1]) ** 2  # (K, H)
    dy = (axis[None, :] - cell[:, 1:]) ** 2  # (K, W)
    gauss = torch.exp(-(dx[:, :, None] + dy[:, None, :]) / (2 * sigma[:, None, None] ** 2))  # (K, H, W)
    heat = boxes.new_zeros(labels.shape[0] * num_classes, cells * cells)
    row = (batch * num_classes + label)[:, None].expand(-1, cells * cells)
    heat = heat.scatter_reduce(0, row, gauss.flatten(1), "amax", include_self=True)
    target_box = torch.cat([coords - cell, box[:, 2:4].log(), box[:, 4:5].sin(), box[:, 4:5].cos()], 1)  # (K, 6)
    return {"heat": heat.view(labels.shape[0], num_classes, cells, cells), "batch": batch, "label": label,
            "i": cell[:, 0], "j": cell[:, 1], "box": target_box}


def focal_heatmap_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CornerNet's penalty-reduced focal loss (alpha 2, beta 4) per class: (B, C, H, W) -> (C,) sums."""
    p = logits.float().sigmoid().clamp(1e-4, 1 - 1e-4)
    target = target.float()
    positive = target >= 1 - 1e-6
    pos = -(1 - p) ** 2 * p.log()
    neg = -(1 - target) ** 4 * p ** 2 * (1 - p).log()
    return torch.where(positive, pos, neg).sum((0, 2, 3))


def grouped_loss(heat_logits: torch.Tensor, box_maps: torch.Tensor, targets: dict, groups,
                 box_weight: float = 0.5) -> dict:
    """Per-task losses: {"heat <g>": ..., "box <g>": ...}, each divided by the task's objects (at least 1).

    heat_logits (B, C, H, W), box_maps (B, G, 6, H, W), targets from :func:`center_targets`.
    """
    check_maps(heat_logits, box_maps, groups)
    num_classes = heat_logits.shape[1]
    group_of = torch.zeros(num_classes, dtype=torch.long, device=heat_logits.device)
    for g, classes in enumerate(groups):
        group_of[list(classes)] = g
    heat_per_class = focal_heatmap_loss(heat_logits, targets["heat"])  # (C,)
    task = group_of[targets["label"]]  # (K,) the task of each object
    predicted = box_maps[targets["batch"], task, :, targets["i"], targets["j"]].float()  # (K, 6) its task's box
    box_per_object = (predicted - targets["box"].float()).abs().sum(1)  # (K,)
    heat_per_task = heat_logits.new_zeros(len(groups), dtype=torch.float32).index_add(0, group_of, heat_per_class)
    box_per_task = box_per_object.new_zeros(len(groups)).index_add(0, task, box_per_object)
    objects = torch.bincount(task, minlength=len(groups)).clamp(min=1).float()  # (G,)
    losses = {}
    for g in range(len(groups)):
        losses[f"heat {g}"] = heat_per_task[g] / objects[g]
        losses[f"box {g}"] = box_weight * box_per_task[g] / objects[g]
    return losses


@torch.no_grad()
def decode(heat_logits: torch.Tensor, box_maps: torch.Tensor, groups, grid: BEVGrid, per_class: int = 20,
           min_score: float = 0.05) -> list[dict]:
    """Detections per scene: {"xy" (n, 2), "wl" (n, 2), "yaw" (n,), "score" (n,), "label" (n,)} on the CPU.

    Per task and class: the 3x3 local maxima of the sigmoid heatmap, the ``per_class`` best above
    ``min_score``; task-local labels mapped to global ones; no NMS across tasks.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class must be an int >= 1 (peaks kept per class and scene), got {per_class!r}")
    if not (0 <= min_score <= 1):
        raise ValueError(f"min_score must be in [0, 1], got {min_score!r}")
    check_maps(heat_logits, box_maps, groups)
    scores = heat_logits.float().sigmoid()
    peaks = scores * (F.max_pool2d(scores, 3, stride=1, padding=1) == scores)  # (B, C, H, W)
    batch_size, _, cells, _ = scores.shape
    k = min(per_class, cells * cells)
    out = [{"xy": [], "wl": [], "yaw": [], "score": [], "label": []} for _ in range(batch_size)]
    for g, table in enumerate(global_labels(groups)):
        local = peaks[:, table.to(peaks.device)]  # (B, n_g, H, W)
        top, index = local.flatten(2).topk(k, dim=2)  # (B, n_g, k)
        i, j = index // cells, index % cells
        box = box_maps[:, g].float().flatten(2)  # (B, 6, H*W)
        picked = box.gather(2, index.flatten(1)[:, None].expand(-1, 6, -1))  # (B, 6, n_g*k)
        centre = torch.stack([i, j], -1).flatten(1, 2) + picked[:, :2].transpose(1, 2)  # (B, n_g*k, 2) cells
        xy = centre * grid.cell - grid.extent
        labels = table.to(peaks.device)[None, :, None].expand_as(top).flatten(1)  # task-local -> global
        for b in range(batch_size):
            keep = top[b].flatten() >= min_score
            out[b]["xy"].append(xy[b][keep])
            out[b]["wl"].append(picked[b, 2:4].T[keep].exp())
            out[b]["yaw"].append(torch.atan2(picked[b, 4], picked[b, 5])[keep])
            out[b]["score"].append(top[b].flatten()[keep])
            out[b]["label"].append(labels[b][keep])
    return [{key: torch.cat(parts).cpu() for key, parts in scene.items()} for scene in out]
