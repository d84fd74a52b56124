"""The theoretical receptive field of a chain of layers, and where each output unit sits in the image.

The *theoretical* receptive field (RF) of an output unit is the set of input pixels that can
affect it at all: for a stack of rigid convolutions it is a box whose size follows from the
kernels, strides and dilations (Araujo et al., "Computing receptive fields of convolutional
neural networks", Distill 2019). Per axis, a layer with kernel ``k``, stride ``s``, padding ``p``
and dilation ``d`` after a stack with RF ``size``, ``jump`` (input pixels between neighbouring
units) and ``start`` (input position of unit 0's centre) gives

    size' = size + d (k - 1) jump,   jump' = jump s,   start' = start + (d (k - 1) / 2 - p) jump.

This is infrastructure, not a paper's mechanism: :mod:`kit.nn.point_classifier` places its
output grid in the image with it, :mod:`kit.analysis.sampling_points` places every deformable
layer's input grid, and :mod:`kit.analysis.erf` compares the effective RF with it.
Conventions: per axis ``(rows, cols)``; positions are pixel indices (pixel ``i`` covers
``[i, i + 1)``), except :meth:`ReceptiveField.box`, an ``(x0, y0, x1, y1)`` box.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.nn.modules.utils import _pair

from kit.ops.deform_conv import DeformConv2d
from kit.ops.deformable_kernels import DeformableKernel2d

__all__ = ["ReceptiveField", "POSITIONWISE", "receptive_field"]


@dataclass(frozen=True)
class ReceptiveField:
    """The theoretical RF of a rigid stack, per axis ``(rows, cols)``, in input pixels.

    size: the RF's extent; jump: input pixels between neighbouring output units; start: the
    input position (pixel index, fractional for even kernels) of output unit (0, 0)'s centre.
    """

    size: tuple[int, int] = (1, 1)
    jump: tuple[int, int] = (1, 1)
    start: tuple[float, float] = (0.0, 0.0)

    def centre(self, row: float, col: float) -> tuple[float, float]:
        """Input position (pixel index) of output unit ``(row, col)``."""
        return (self.start[0] + row * self.jump[0], self.start[1] + col * self.jump[1])

    def box(self, row: float, col: float) -> tuple[float, float, float, float]:
        """The RF of unit ``(row, col)`` as an ``(x0, y0, x1, y1)`` box in continuous image coordinates.

        Pixel ``i`` covers ``[i, i + 1)``; the box is not clipped to the image (padding reads zeros).
        """
        y, x = self.centre(row, col)
        return (x + 0.5 - self.size[1] / 2, y + 0.5 - self.size[0] / 2,
                x + 0.5 + self.size[1] / 2, y + 0.5 + self.size[0] / 2)

    def to_feature(self, x: float, y: float) -> tuple[float, float]:
        """Continuous image point ``(x, y)`` -> fractional ``(row, col)`` on the output grid."""
        return ((y - 0.5 - self.start[0]) / self.jump[0], (x - 0.5 - self.start[1]) / self.jump[1])

    def then(self, kernel, stride, padding, dilation) -> "ReceptiveField":
        """The RF after one more rigid layer with these (per-axis) parameters."""
        size, jump, start = [], [], []
        for axis in range(2):
            span = dilation[axis] * (kernel[axis] - 1)  # extent of the dilated kernel minus one
            size.append(self.size[axis] + span * self.jump[axis])
            start.append(self.start[axis] + (span / 2 - padding[axis]) * self.jump[axis])
            jump.append(self.jump[axis] * stride[axis])
        return ReceptiveField(tuple(size), tuple(jump), tuple(start))


POSITIONWISE = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Identity, nn.Dropout, nn.GroupNorm,
            nn.Sigmoid, nn.Hardswish, nn.LeakyReLU)


def receptive_field(layers, deformable: str = "error", rf: ReceptiveField | None = None) -> ReceptiveField:
    """The theoretical RF of a chain of layers, walked in order (``nn.Sequential`` is entered).

    Counted: ``nn.Conv2d``, ``nn.MaxPool2d``, ``nn.AvgPool2d`` and
    :class:`~kit.ops.deformable_kernels.DeformableKernel2d` (its rigid ``K x K`` taps: DK does not
    move the RF). Position-wise layers (BatchNorm, activations, ...) leave it unchanged. A
    :class:`~kit.ops.deform_conv.DeformConv2d` has no fixed RF (its offsets are unbounded):
    ``deformable="error"`` raises, ``"rigid"`` counts its zero-offset grid. Any other module with
    children may branch (a residual block): pass the layers of its longest path instead.
    """
    if deformable not in ("error", "rigid"):
        raise ValueError(f"deformable must be 'error' or 'rigid', got {deformable!r}")
    rf = rf or ReceptiveField()
    for layer in ([layers] if isinstance(layers, nn.Module) and not isinstance(layers, nn.Sequential) else layers):
        if isinstance(layer, nn.Sequential):
            rf = receptive_field(layer, deformable, rf)
        elif isinstance(layer, DeformConv2d):
            if deformable == "error":
                raise ValueError("a DeformConv2d has no fixed theoretical receptive field (its offsets are "
                                 "unbounded); pass deformable='rigid' to count its zero-offset grid")
            rf = rf.then(layer.kernel_size, layer.stride, layer.padding, layer.dilation)
        elif isinstance(layer, DeformableKernel2d):
            rf = rf.then(layer.kernel_size, layer.stride, layer.padding, layer.dilation)
        elif isinstance(layer, nn.Conv2d):
            rf = rf.then(layer.kernel_size, layer.stride, layer.padding, layer.dilation)
        elif isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
            dilation = getattr(layer, "dilation", 1)
            rf = rf.then(_pair(layer.kernel_size), _pair(layer.stride or layer.kernel_size), _pair(layer.padding),
                         _pair(dilation))
        elif isinstance(layer, POSITIONWISE) or not any(True for _ in layer.children()):
            if not isinstance(layer, POSITIONWISE):
                raise ValueError(f"receptive_field does not know how {type(layer).__name__} moves pixels")
        else:
            raise ValueError(f"{type(layer).__name__} has sub-modules that may branch; pass the layers of "
                             "its longest path (e.g. [block.conv1, block.conv2]) instead")
    return rf
