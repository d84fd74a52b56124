"""Class-balanced grouping: one head per group of similar classes (P25, CBGS: Zhu et al. 2019, arXiv 1908.09492).

CBGS splits the ten nuScenes classes into *tasks* by size and shape — {car}, {truck, construction
vehicle}, {bus, trailer}, {barrier}, {motorcycle, bicycle}, {pedestrian, traffic cone}
(:data:`CBGS_GROUPS`) — so that classes of similar shape share a head and the groups hold more
balanced numbers of instances. All heads read the same shared BEV features; each has its own
classification channels (one centre heatmap per class of the group, here anchor-free) and its own box
regression (sub-cell offset, log width and length, sin/cos yaw: 6 channels). Each task's loss is
normalised by the task's own number of objects, and the task losses are summed (Det3D's
``MultiGroupHead``); one group holding all classes is the ordinary shared head.

At the merge, task-local class ``k`` of group ``g`` becomes the global class ``groups[g][k]`` (Det3D
adds the cumulative class count of the earlier tasks; with contiguous groups that is the same number).
"""
from __future__ import annotations

import torch
from torch import nn

REGRESSION = 6  # offset x, offset y, log w, log l, sin yaw, cos yaw
CBGS_GROUPS = ((0,), (1, 2), (3, 4), (5,), (6, 7), (8, 9))  # the paper's six tasks in nuScenes' class order


def check_groups(groups, num_classes: int) -> tuple[tuple[int, ...], ...]:
    """``groups`` as a tuple of tuples; it must partition ``0 .. num_classes - 1`` (every class exactly once)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    if not isinstance(groups, (tuple, list)) or not groups or not all(isinstance(g, (tuple, list)) and g for g in groups):
        raise ValueError(f"groups must be a non-empty tuple of non-empty tuples of class ids, got {groups!r}")
    flat = [c for g in groups for c in g]
    if any(isinstance(c, bool) or not isinstance(c, int) for c in flat):
        raise TypeError(f"class ids in groups must be ints, got {groups!r}")
    if sorted(flat) != list(range(num_classes)):
        raise ValueError(f"groups must partition the classes 0..{num_classes - 1} (each exactly once), got {groups!r}")
    return tuple(tuple(g) for g in groups)


def global_labels(groups) -> list[torch.Tensor]:
    """Per group, (n_g,) long: the global class of each task-local class (the merge's label table)."""
    groups = check_groups(groups, sum(len(g) for g in groups) if isinstance(groups, (tuple, list)) and all(
        isinstance(g, (tuple, list)) for g in groups) else 0)
    return [torch.tensor(g, dtype=torch.long) for g in groups]


class TaskHead(nn.Module):
    """1x1 convolutions on the shared features: (B, F, H, W) -> heat logits (B, n, H, W), box (B, 6, H, W)."""

    def __init__(self, in_channels: int, num_classes: int, prior: float = 0.1):
        super().__init__()
        self.heat = nn.Conv2d(in_channels, num_classes, 1)
        self.box = nn.Conv2d(in_channels, REGRESSION, 1)
        nn.init.constant_(self.heat.bias, float(torch.logit(torch.tensor(prior))))  # CenterNet's -2.19 for 0.1

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heat(features), self.box(features)


class GroupedHeads(nn.Module):
    """One :class:`TaskHead` per group; ``groups=(tuple(range(C)),)`` is the single shared head.

    forward: features (B, F, H, W) -> heat logits (B, C, H, W) in *global* class order (each group's
    channels put at its classes) and box maps (B, G, 6, H, W), one per group.
    """

    def __init__(self, in_channels: int, num_classes: int, groups=None):
        super().__init__()
        self.groups = check_groups(groups if groups is not None else (tuple(range(num_classes)),), num_classes)
        self.num_classes = num_classes
        self.heads = nn.ModuleList(TaskHead(in_channels, len(g)) for g in self.groups)
        group_of = torch.zeros(num_classes, dtype=torch.long)
        for g, classes in enumerate(self.groups):
            group_of[list(classes)] = g
        self.register_buffer("group_of", group_of, persistent=False)  # (C,) the task of each class

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        expected = self.heads[0].heat.in_channels
        if not isinstance(features, torch.Tensor) or features.dim() != 4 or features.shape[1] != expected:
            raise ValueError(f"features must be (B, {expected}, H, W), got "
                             f"{tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__}")
        outputs = [head(features) for head in self.heads]
        order = torch.tensor([c for g in self.groups for c in g], device=features.device)
        stacked = torch.cat([heat for heat, _ in outputs], 1)  # (B, C, H, W) in group order
        heat = stacked[:, torch.argsort(order)]  # back to global class order
        return heat, torch.stack([box for _, box in outputs], 1)  # (B, C, H, W), (B, G, 6, H, W)
