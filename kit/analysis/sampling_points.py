"""Effective sampling locations of stacked deformable layers, as the DCN papers draw them.

One activation of the last deformable layer reads ``K`` points of its input; each of those lies
(near) a unit of the previous deformable layer, which read ``K`` points of its own input, and
so on: ``L`` stacked layers give ``K**L`` image positions. With DCNv2, each path carries the
product of the modulation scalars along it, which the figures draw as the points' opacity.

Conventions: positions are traced through the deformable layers only (the rigid layers
between them are treated as not moving positions, as in the papers' figures); a position that
falls between units takes the offsets of the nearest unit; offset group 0 is followed. Every
layer's grids are placed in the image by :class:`kit.nn.receptive_field.ReceptiveField` (``start``
and ``jump`` of its input grid), so stride and padding are accounted for exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kit.nn.receptive_field import ReceptiveField
from kit.ops.deform_conv import DeformConv2d, sampling_positions
from kit.runtime import evaluating

__all__ = ["DeformTrace", "record_deformable", "stacked_sampling_points"]


@dataclass
class DeformTrace:
    """What one deformable layer did for one image.

    offset (2*G*K, Ho, Wo), mask (G*K, Ho, Wo) or None; input_grid places the layer's input
    units in the image (its ``start`` and ``jump``); kernel/stride/padding/dilation as the layer.
    """

    offset: torch.Tensor
    mask: torch.Tensor | None
    input_grid: ReceptiveField
    kernel_size: tuple
    stride: tuple
    padding: tuple
    dilation: tuple

    def output_grid(self) -> ReceptiveField:
        return self.input_grid.then(self.kernel_size, self.stride, self.padding, self.dilation)


def record_deformable(model: nn.Module, images: torch.Tensor, input_grids: dict,
                      forward=None) -> list[list[DeformTrace]]:
    """Run ``forward(images)`` (default ``model(images)``) once in eval mode and record every
    DeformConv2d's offsets and masks.

    input_grids: layer -> ReceptiveField of that layer's input grid. Returns, per image, the
    traces in forward order (tensors on the CPU).
    """
    records = []

    def hook(layer, inputs, _output):
        offset, mask = layer.offsets_and_mask(inputs[0])
        records.append((layer, offset.detach().cpu(), None if mask is None else mask.detach().cpu()))

    layers = [m for m in model.modules() if isinstance(m, DeformConv2d)]
    missing = [m for m in layers if m not in input_grids]
    if missing:
        raise ValueError(f"input_grids lacks {len(missing)} of the model's {len(layers)} DeformConv2d layers")
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with evaluating(model):
            (forward or model)(images)
    finally:
        for h in handles:
            h.remove()
    return [[DeformTrace(offset[n], None if mask is None else mask[n], input_grids[layer], layer.kernel_size,
                         layer.stride, layer.padding, layer.dilation) for layer, offset, mask in records]
            for n in range(images.shape[0])]


def stacked_sampling_points(traces: list[DeformTrace], row: float, col: float):
    """Image positions reached from unit ``(row, col)`` of the last traced layer, back through all.

    Returns points (K**L, 2) as ``(x, y)`` pixel-index positions in the image (pixel ``i``'s
    centre is ``i + 0.5`` in continuous coordinates), and weights (K**L,): the product of the
    masks along each path (all ones without modulation).
    """
    if not traces:
        raise ValueError("need at least one DeformTrace")
    points = torch.tensor([[float(row), float(col)]])  # (row, col) on the last layer's output grid
    weights = torch.ones(1)
    for depth, trace in enumerate(reversed(traces)):
        if depth > 0:  # image position -> the output grid of this (earlier) layer
            out_grid = trace.output_grid()
            points = torch.stack([(points[:, 0] - out_grid.start[0]) / out_grid.jump[0],
                                  (points[:, 1] - out_grid.start[1]) / out_grid.jump[1]], dim=1)
        ho, wo = trace.offset.shape[1:]
        unit_r = points[:, 0].round().long().clamp(0, ho - 1)
        unit_c = points[:, 1].round().long().clamp(0, wo - 1)
        positions = sampling_positions(trace.offset[None], trace.kernel_size, trace.stride, trace.padding,
                                       trace.dilation)[0, 0]  # (K, 2, Ho, Wo) on the input grid
        taps = positions[:, :, unit_r, unit_c].permute(2, 0, 1)  # (P, K, 2)
        if trace.mask is not None:
            k = taps.shape[1]
            weights = (weights[:, None] * trace.mask[:k, unit_r, unit_c].T).reshape(-1)  # (P*K,)
        else:
            weights = weights.repeat_interleave(taps.shape[1])
        grid = trace.input_grid  # input grid -> image pixel positions
        taps = taps.reshape(-1, 2)
        points = torch.stack([grid.start[0] + taps[:, 0] * grid.jump[0], grid.start[1] + taps[:, 1] * grid.jump[1]],
                             dim=1)  # (P*K, 2) as (row, col) pixel indices
    return points.flip(-1), weights  # as (x, y)
