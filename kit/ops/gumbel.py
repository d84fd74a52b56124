"""Gumbel-sigmoid: a stochastic binary mask that gradients can pass through.

A mask bit ``m ~ Bernoulli(p)`` is not differentiable in ``p``. The Gumbel-softmax trick
(Jang et al., arXiv 1611.01144; Maddison et al., arXiv 1611.00712) relaxes the two-way choice
"1 or 0" with Gumbel noise ``g = -log(-log U)`` and a temperature ``T``:

.. math:: m = \\mathrm{softmax}\\Big(\\frac{[\\log p + g_1,\\ \\log(1-p) + g_2]}{T}\\Big)_0
          = \\sigma\\Big(\\frac{\\log p - \\log(1-p) + g_1 - g_2}{T}\\Big)

As ``T -> 0`` the sample becomes 0/1 with ``P(m = 1) = p`` exactly. The form and the
``eps = 1e-8`` guards follow ``GumbelSigmoid`` in the official code of "Spatially Adaptive
Inference with Stochastic Feature Sampling and Interpolation" (arXiv 2003.08866,
zdaxie/SpatiallyAdaptiveInference-Detection): it takes probabilities, draws ``U_1`` (for ``p``)
then ``U_2`` (for ``1 - p``), and divides by ``T + eps``. ``hard=True`` returns the 0/1 mask
``[m >= 0.5]`` with the soft sample's gradient (straight-through).

The many-class form is :func:`torch.nn.functional.gumbel_softmax`, re-exported here.
"""
from __future__ import annotations

import torch
from torch.nn.functional import gumbel_softmax

__all__ = ["gumbel_sigmoid", "gumbel_softmax", "straight_through", "threshold_mask", "temperature_at"]


def straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """``hard`` in the forward pass, ``soft``'s gradient in the backward pass."""
    return hard + (soft - soft.detach())


def gumbel_sigmoid(probs: torch.Tensor, temperature: float = 1.0, hard: bool = False,
                   generator: torch.Generator | None = None, eps: float = 1e-8) -> torch.Tensor:
    """A relaxed Bernoulli sample of the same shape as ``probs`` (probabilities in [0, 1]).

    ``hard``: the 0/1 mask ``[m >= 0.5]`` with straight-through gradients. ``generator`` seeds
    the noise (the official code uses ``torch.rand_like``; the noise is also drawn at test time,
    so evaluation is only reproducible with a seeded generator).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if probs.numel() and (probs.min() < 0 or probs.max() > 1):
        raise ValueError("gumbel_sigmoid takes probabilities in [0, 1] (apply a sigmoid to logits first)")
    dtype = torch.promote_types(probs.dtype, torch.float32)  # noise in at least float32, also under autocast
    u1 = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=dtype)
    u2 = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=dtype)
    g1 = -torch.log(-torch.log(u1 + eps) + eps)  # Gumbel noise, with the official eps guards
    g2 = -torch.log(-torch.log(u2 + eps) + eps)
    p = probs.to(dtype)
    score_on = (torch.log(p + eps) + g1) / (temperature + eps)
    score_off = (torch.log(1 - p + eps) + g2) / (temperature + eps)
    soft = torch.sigmoid(score_on - score_off)  # = softmax([on, off])[0]
    if hard:
        soft = straight_through((soft >= 0.5).to(dtype), soft)
    return soft.to(probs.dtype)


def threshold_mask(mask: torch.Tensor) -> torch.Tensor:
    """The official test-time mask ``m * [m >= 0.5]``: zero below one half, the sample above."""
    return mask * (mask >= 0.5).to(mask.dtype)


def temperature_at(step: int, max_temperature: float = 1.0, decay: float = 0.99998) -> float:
    """The official schedule: ``T = T_max * decay ** step`` (the code multiplies by ``decay`` per call).

    For a short run, choose ``decay`` so the end temperature is what you want, e.g.
    ``decay = (T_end / T_max) ** (1 / steps)``.
    """
    if step < 0 or max_temperature <= 0 or not 0 < decay <= 1:
        raise ValueError(f"need step >= 0, max_temperature > 0 and decay in (0, 1], got {step}, "
                         f"{max_temperature}, {decay}")
    return max_temperature * decay ** step
