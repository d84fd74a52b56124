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

The theoretical RF itself is :mod:`kit.nn.receptive_field`'s.

Luo et al. show the ERF of a deep rigid stack is roughly Gaussian and occupies a fraction of the
theoretical RF. Deformable convolution (DCN) changes *where* a unit reads, so its theoretical
RF is no longer a fixed box; Deformable Kernels change *how much* each rigid tap weighs, so the
RF stays rigid while the ERF moves (arXiv 1910.02940, Sec. 3).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from kit.ops.deform_conv import bilinear_sample
from kit.runtime import evaluating

__all__ = ["effective_receptive_field", "erf_radius", "erf_mass_inside", "centred_mean"]


def _module_behind(feature_fn):
    """The module that ``feature_fn`` is (or whose bound method it is), or None for a plain function."""
    module = feature_fn if isinstance(feature_fn, nn.Module) else getattr(feature_fn, "__self__", None)
    return module if isinstance(module, nn.Module) else None


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
    module = _module_behind(feature_fn)
    in_eval_mode = evaluating(module, grad=True) if module is not None else contextlib.nullcontext()
    with in_eval_mode, torch.enable_grad():
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
