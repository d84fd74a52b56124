"""Effective and theoretical receptive fields (Luo, Li, Urtasun, Zemel; NeurIPS 2016, arXiv 1701.04128).

The *theoretical* receptive field (RF) of an output unit is the set of input pixels that can
affect it at all: for a stack of rigid convolutions it is a box whose size follows from the
kernels, strides and dilations. The *effective* receptive field (ERF) is how much each of those
pixels actually does affect it: the gradient of the unit with respect to the input,

.. math::

    \\mathrm{ERF}(q) = \\frac{1}{N} \\sum_{n=1}^{N} \\sum_{c'} \\Big| \\frac{\\partial}{\\partial x_{n,c'}(q)}
        \\sum_{c} y_{n,c}(p_n) \\Big|

This module's choices, following Luo et al.: the gradient signal is 1 on every channel of the
chosen output unit ``p_n`` and 0 elsewhere (so the backpropagated quantity is the channel sum
``sum_c y_c(p)``), the input gradient is taken in absolute value and summed over the input's
colour channels, then averaged over images. ``p_n`` may be fractional (e.g. the centre of an
object): the unit is then read by bilinear interpolation of the feature map, as a point head
reads it. The model runs in eval mode, since BatchNorm in training mode mixes the images of a
batch and the gradient of one image's unit would leak into the others.

Luo et al. show the ERF of a deep rigid stack is roughly Gaussian and occupies a fraction of the
theoretical RF. Deformable convolution (DCN) changes *where* a unit reads, so its theoretical
RF is no longer a fixed box; Deformable Kernels change *how much* each rigid tap weighs, so the
RF stays rigid while the ERF moves (arXiv 1910.02940, Sec. 3).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from kit.ops.deform_conv import DeformConv2d, bilinear_sample
from kit.ops.deformable_kernels import DeformableKernel2d

__all__ = ["effective_receptive_field", "erf_radius", "erf_mass_inside", "centred_mean", "ReceptiveField",
           "receptive_field"]


@contextlib.contextmanager
def _eval_mode(feature_fn):
    """Eval mode for the module behind ``feature_fn`` (a module, or a bound method of one)."""
    module = feature_fn if isinstance(feature_fn, nn.Module) else getattr(feature_fn, "__self__", None)
    if not isinstance(module, nn.Module):
        yield
        return
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def effective_receptive_field(feature_fn, images: torch.Tensor, positions: torch.Tensor | None = None,
                              per_image: bool = False) -> torch.Tensor:
    """The ERF of one output unit per image, averaged over the images (or per image).

    feature_fn: images (B, 3, H, W) -> feature map (B, C, h, w); a module, or a bound method of
    one (``model.features``), runs in eval mode and is put back in its mode afterwards.
    positions: (B, 2) ``(row, col)`` of the unit in feature-map coordinates, fractional allowed
    (bilinear), or None for the centre unit ``(h // 2, w // 2)`` of every image.
    Returns (H, W), or (B, H, W) with ``per_image``: summed absolute input gradients.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    images = images.detach().clone().requires_grad_(True)
    with _eval_mode(feature_fn), torch.enable_grad():
        features = feature_fn(images)
        if not isinstance(features, torch.Tensor) or features.dim() != 4 or features.shape[0] != images.shape[0]:
            raise ValueError("feature_fn must return one (B, C, h, w) feature map for a batch of B images")
        b, _, h, w = features.shape
        if positions is None:
            positions = torch.tensor([[h // 2, w // 2]], dtype=features.dtype).expand(b, 2)
        positions = torch.as_tensor(positions, dtype=features.dtype, device=features.device)
        if positions.shape != (b, 2):
            raise ValueError(f"positions must be (B={b}, 2) as (row, col) on the feature map, got {tuple(positions.shape)}")
        unit = bilinear_sample(features, positions[:, :1], positions[:, 1:])  # (B, C, 1)
        (gradient,) = torch.autograd.grad(unit.sum(), images)
    erf = gradient.abs().sum(dim=1)  # (B, H, W)
    return erf if per_image else erf.mean(dim=0)


def erf_radius(erf: torch.Tensor, centres: torch.Tensor, mass: float = 0.5) -> torch.Tensor:
    """Radius (pixels) of the smallest disc around each centre that holds ``mass`` of the ERF.

    erf: (B, H, W) per-image ERFs; centres: (B, 2) as ``(row, col)`` in pixel-index coordinates.
    Returns (B,). A compact ERF has a small radius; one spread to the object's extent, a large one.
    """
    if not 0 < mass <= 1:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    if erf.dim() != 3 or centres.shape != (erf.shape[0], 2):
        raise ValueError(f"need erf (B, H, W) and centres (B, 2); got {tuple(erf.shape)}, {tuple(centres.shape)}")
    b, h, w = erf.shape
    rows = torch.arange(h, dtype=erf.dtype, device=erf.device)[:, None]
    cols = torch.arange(w, dtype=erf.dtype, device=erf.device)[None, :]
    distance = ((rows - centres[:, 0, None, None]) ** 2 + (cols - centres[:, 1, None, None]) ** 2).sqrt()
    order = distance.flatten(1).argsort(dim=1)  # (B, H*W) nearest first
    weights = erf.flatten(1).gather(1, order).cumsum(1)
    weights = weights / weights[:, -1:].clamp(min=torch.finfo(erf.dtype).tiny)
    first = (weights < mass).sum(1).clamp(max=h * w - 1)  # first index reaching the mass
    return distance.flatten(1).gather(1, order).gather(1, first[:, None])[:, 0]


def erf_mass_inside(erf: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Fraction of each image's ERF that falls inside its object mask: erf, masks (B, H, W) -> (B,)."""
    if erf.shape != masks.shape:
        raise ValueError(f"erf {tuple(erf.shape)} and masks {tuple(masks.shape)} must have the same shape")
    total = erf.flatten(1).sum(1)
    return (erf * masks).flatten(1).sum(1) / total.clamp(min=torch.finfo(erf.dtype).tiny)


def centred_mean(erfs: torch.Tensor, centres: torch.Tensor, size: int) -> torch.Tensor:
    """Mean of per-object ERFs, each cut out around its own centre: (P, H, W) -> (size, size).

    centres: (P, 2) integer-rounded ``(row, col)`` pixel indices, placed at ``(size // 2, size // 2)``
    of the window; pixels beyond the image count as zero. Averaging over many objects this way
    (Luo et al. average over images) shows the ERF's typical shape without one image's noise.
    """
    if erfs.dim() != 3 or centres.shape != (erfs.shape[0], 2):
        raise ValueError(f"need erfs (P, H, W) and centres (P, 2); got {tuple(erfs.shape)}, {tuple(centres.shape)}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    half = size // 2
    padded = torch.nn.functional.pad(erfs, (half, half, half, half))  # (P, H + 2 half, W + 2 half)
    rows, cols = centres.round().long().unbind(1)
    windows = [padded[i, r:r + size, c:c + size] for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist()))]
    return torch.stack(windows).mean(0)


# --------------------------------------------------------------------------- theoretical RF


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

    def to_feature(self, y: float, x: float) -> tuple[float, float]:
        """Continuous image point ``(y, x)`` -> fractional ``(row, col)`` on the output grid."""
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


_NEUTRAL = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Identity, nn.Dropout, nn.GroupNorm,
            nn.Sigmoid, nn.Hardswish, nn.LeakyReLU)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


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
        elif isinstance(layer, _NEUTRAL) or not any(True for _ in layer.children()):
            if not isinstance(layer, _NEUTRAL):
                raise ValueError(f"receptive_field does not know how {type(layer).__name__} moves pixels")
        else:
            raise ValueError(f"{type(layer).__name__} has sub-modules that may branch; pass the layers of "
                             "its longest path (e.g. [block.conv1, block.conv2]) instead")
    return rf
