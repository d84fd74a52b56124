"""A tiny plain CNN that classifies the object at given image points, with a pluggable 3x3 operator.

This is the classification half of a dense one-stage detector without the boxes: the feature
map of the last stage is read (bilinearly) at each object's centre and a linear layer names
the object's class. It is the smallest setting in which "what does the unit at an object's
centre see?" decides the result, which is exactly what deformable operators change, so it is
the test bed for comparing operators on the same data, model size and budget:

* full 3x3 convs (``ConvUnit``: op -> BN -> ReLU): ``rigid``, ``dcnv1``, ``dcnv2``
  (:class:`kit.ops.deform_conv.DeformConv2d`, used by P42);
* depthwise 3x3 convs in separable units (``SeparableUnit``: depthwise op -> BN -> ReLU ->
  1x1 -> BN -> ReLU): ``dw-rigid``, ``dw-dcn``, ``dk``, ``dk-global``, ``dk+dcn``
  (:class:`kit.ops.deformable_kernels.DeformableKernel2d`, used by P39).

Layout: a rigid 3x3 stride-2 stem, then one stage per width; the first unit of a stage has
the stage's stride (default 2). No residual connections, so the whole network is one chain and its theoretical
receptive field is exact (:func:`kit.nn.receptive_field.receptive_field`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kit.nn.receptive_field import ReceptiveField, receptive_field
from kit.ops.deform_conv import DeformConv2d, bilinear_sample
from kit.ops.deformable_kernels import DeformableKernel2d
from kit.runtime import evaluating

__all__ = ["FULL_OPS", "DEPTHWISE_OPS", "make_op", "PointClassifier", "object_points", "point_loss",
           "predict_points", "optimizer_groups"]

FULL_OPS = ("rigid", "dcnv1", "dcnv2")
DEPTHWISE_OPS = ("dw-rigid", "dw-dcn", "dk", "dk-global", "dk+dcn")


def make_op(op: str, in_channels: int, out_channels: int, stride: int = 1, scope_size: int = 4) -> nn.Module:
    """One 3x3 operator (padding 1, no bias: a BatchNorm follows)."""
    depthwise = op in DEPTHWISE_OPS
    if depthwise and in_channels != out_channels:
        raise ValueError(f"depthwise op {op!r} needs in_channels == out_channels, got {in_channels} -> {out_channels}")
    if op == "rigid":
        return nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
    if op in ("dcnv1", "dcnv2"):
        return DeformConv2d(in_channels, out_channels, 3, stride, 1, bias=False, modulated=op == "dcnv2")
    if op == "dw-rigid":
        return nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False)
    if op == "dw-dcn":
        return DeformConv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False, modulated=False)
    if op in ("dk", "dk+dcn"):
        return DeformableKernel2d(in_channels, 3, scope_size, stride, 1, image_offsets=op == "dk+dcn")
    if op == "dk-global":
        return DeformableKernel2d(in_channels, 3, scope_size, stride, 1, mode="global")
    raise ValueError(f"unknown op {op!r}; use one of {FULL_OPS + DEPTHWISE_OPS}")


def conv_unit(op: str, in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(make_op(op, in_channels, out_channels, stride), nn.BatchNorm2d(out_channels), nn.ReLU())


def separable_unit(op: str, in_channels: int, out_channels: int, stride: int, scope_size: int = 4) -> nn.Sequential:
    return nn.Sequential(make_op(op, in_channels, in_channels, stride, scope_size), nn.BatchNorm2d(in_channels),
                         nn.ReLU(), nn.Conv2d(in_channels, out_channels, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


class PointClassifier(nn.Module):
    """Stem + stages of 3x3 units (one operator per stage) + a linear classifier read at points.

    widths/blocks/ops/strides: one entry per stage (ops[i] is the 3x3 operator of every unit of
    stage i; strides[i] the stride of its first unit). Depthwise ops build separable units,
    full ops plain conv units.
    """

    def __init__(self, num_classes: int, widths=(16, 32, 64), blocks=(1, 1, 2), ops=("rigid", "rigid", "rigid"),
                 strides=None, stem_width: int | None = None, scope_size: int = 4):
        super().__init__()
        strides = tuple(strides) if strides is not None else (2,) * len(widths)
        if not len(widths) == len(blocks) == len(ops) == len(strides):
            raise ValueError(f"widths, blocks, ops and strides need one entry per stage; got {widths}, {blocks}, "
                             f"{ops}, {strides}")
        for op in ops:
            if op not in FULL_OPS + DEPTHWISE_OPS:
                raise ValueError(f"unknown op {op!r}; use one of {FULL_OPS + DEPTHWISE_OPS}")
        stem_width = stem_width or widths[0]
        units = [conv_unit("rigid", 3, stem_width, 2)]
        in_channels = stem_width
        for width, count, op, first_stride in zip(widths, blocks, ops, strides):
            for index in range(count):
                stride = first_stride if index == 0 else 1
                if op in DEPTHWISE_OPS:
                    units.append(separable_unit(op, in_channels, width, stride, scope_size))
                else:
                    units.append(conv_unit(op, in_channels, width, stride))
                in_channels = width
        self.body = nn.Sequential(*units)
        self.classifier = nn.Linear(in_channels, num_classes)
        self.ops = tuple(ops)
        self.grid = receptive_field(self.body, deformable="rigid")  # places the output grid in the image

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map (B, C, h, w)."""
        return self.body(images)

    def points_to_grid(self, points: torch.Tensor) -> torch.Tensor:
        """Image points (..., 2) as continuous ``(x, y)`` pixels -> ``(row, col)`` on the feature grid."""
        row = (points[..., 1] - 0.5 - self.grid.start[0]) / self.grid.jump[0]
        col = (points[..., 0] - 0.5 - self.grid.start[1]) / self.grid.jump[1]
        return torch.stack([row, col], dim=-1)

    def forward(self, images: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Class logits (B, M, num_classes) of the objects at ``points`` (B, M, 2), ``(x, y)`` in pixels."""
        if points.dim() != 3 or points.shape[0] != images.shape[0] or points.shape[2] != 2:
            raise ValueError(f"points must be (B={images.shape[0]}, M, 2) as (x, y); got {tuple(points.shape)}")
        features = self.features(images)  # (B, C, h, w)
        grid = self.points_to_grid(points)  # (B, M, 2)
        sampled = bilinear_sample(features, grid[..., 0], grid[..., 1])  # (B, C, M)
        return self.classifier(sampled.transpose(1, 2))

    def input_grids(self) -> dict:
        """Each deformable layer -> the ReceptiveField of its input grid (for sampling-point traces)."""
        grids, rf = {}, ReceptiveField()
        for unit in self.body:
            for layer in unit:
                if isinstance(layer, (DeformConv2d, DeformableKernel2d)):
                    grids[layer] = rf
                rf = receptive_field([layer], deformable="rigid", rf=rf)
        return grids

    def offset_parameters(self) -> list[nn.Parameter]:
        """Parameters of every offset/mask branch."""
        return [p for m in self.modules() if isinstance(m, (DeformConv2d, DeformableKernel2d))
                for p in m.offset_parameters()]


def optimizer_groups(model: PointClassifier, offset_lr_scale: float = 0.1) -> list[dict]:
    """Two param groups: the offset branches get ``lr_scale = offset_lr_scale`` (DCNv2: 0.1x lr)."""
    offset_ids = {id(p) for p in model.offset_parameters()}
    main = [p for p in model.parameters() if id(p) not in offset_ids]
    groups = [{"params": main, "lr_scale": 1.0}]
    if offset_ids:
        groups.append({"params": model.offset_parameters(), "lr_scale": offset_lr_scale})
    return groups


def object_points(boxes: torch.Tensor, labels: torch.Tensor):
    """Box centres (B, K, 2) as ``(x, y)`` and the labels (B, K) (-1 = empty slot) of shape scenes."""
    return (boxes[..., :2] + boxes[..., 2:]) / 2, labels


def point_loss(model: PointClassifier, images: torch.Tensor, points: torch.Tensor, labels: torch.Tensor) -> dict:
    """Cross-entropy over the objects present (labels >= 0)."""
    logits = model(images, points)  # (B, K, classes)
    valid = labels >= 0
    return {"ce": F.cross_entropy(logits[valid], labels[valid])}


@torch.no_grad()
def predict_points(model: PointClassifier, images: torch.Tensor, points: torch.Tensor, batch_size: int = 64):
    """Predicted class (B, K) at every point, in eval mode and in batches."""
    with evaluating(model):
        out = [model(images[i:i + batch_size], points[i:i + batch_size]).argmax(-1)
               for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out)
