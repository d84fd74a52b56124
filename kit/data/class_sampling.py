"""Class-aware sampling for long-tailed sets: which images a training step sees, by class.

Both samplers read an (N, C) table, ``presence[i, c]`` = image ``i`` holds class ``c``
(``LongTailScenes.presence()``), and are pure functions of the step like
:func:`kit.data.sampling.epoch_sampler`, so a resumed run sees the batches an uninterrupted one
would:

- :func:`repeat_factor_sampler` — LVIS's repeat-factor sampling (Gupta et al. 2019): class ``c``
  in a fraction ``f_c`` of the images gets ``r_c = max(1, sqrt(t / f_c))``, image ``i`` the
  largest ``r_c`` of its classes, and each epoch holds it ``r_i`` times (stochastic rounding);
- :func:`class_aware_sampler` — a class uniformly, then an image holding it (Shen et al. 2016).
"""
from __future__ import annotations

import bisect
import math
from typing import Callable

import torch

__all__ = ["repeat_factors", "repeat_factor_sampler", "class_aware_sampler"]


def _check_presence(presence: torch.Tensor) -> torch.Tensor:
    """(N, C) bool: class c annotated in image i (``LongTailScenes.presence()``)."""
    if not isinstance(presence, torch.Tensor) or presence.dim() != 2 or presence.dtype != torch.bool:
        got = f"{tuple(presence.shape)} {presence.dtype}" if isinstance(presence, torch.Tensor) else type(presence).__name__
        raise ValueError(f"presence must be an (N, C) bool tensor (image i holds class c), got {got}")
    if presence.shape[0] == 0 or presence.shape[1] == 0:
        raise ValueError(f"presence must have at least one image and one class, got shape {tuple(presence.shape)}")
    return presence.cpu()


def repeat_factors(presence: torch.Tensor, threshold: float) -> torch.Tensor:
    """LVIS's repeat factor of each image (N,) float64: ``r_c = max(1, sqrt(t / f_c))`` with ``f_c``
    the fraction of images holding class c, and ``r_i = max`` over the classes of image i (1 for
    an image with no class)."""
    presence = _check_presence(presence)
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a finite number > 0 (LVIS uses 0.001), got {threshold!r}")
    fraction = presence.double().mean(0)  # (C,)
    per_class = torch.sqrt(threshold / fraction).clamp(min=1)  # (C,); inf for a class in no image, never used
    return torch.where(presence, per_class[None], torch.ones(())).amax(1).clamp(min=1)  # (N,)


def repeat_factor_sampler(presence: torch.Tensor, batch_size: int, seed: int,
                          threshold: float) -> Callable[[int], torch.Tensor]:
    """``step -> indices``: repeat-factor sampling (LVIS), a pure function of the step.

    Epoch ``e`` holds image i ``floor(r_i)`` times plus once more with probability
    ``r_i - floor(r_i)`` (stochastic rounding from a generator seeded by ``(seed, e)``), in the
    order of a permutation drawn as :func:`epoch_sampler` draws it, cut into full batches (the
    leftover of each epoch is skipped). With every ``r_i = 1`` this *is* ``epoch_sampler``.
    The epoch lengths are remembered in the closure, so a late step costs one pass per new epoch.
    """
    factors = repeat_factors(presence, threshold)  # (N,)
    n = len(factors)
    if not isinstance(batch_size, int) or not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be an int in 1..{n} (the number of images), got {batch_size!r}")
    whole, fraction = factors.floor(), factors - factors.floor()
    cumulative = [0]  # batches before epoch e
    last = [None, None]  # the latest epoch's items, (epoch, items)

    def epoch_items(epoch: int) -> torch.Tensor:
        rounding = torch.Generator().manual_seed(seed * 100_003 + epoch + 7_777_777)
        copies = (whole + (torch.rand(n, generator=rounding, dtype=torch.float64) < fraction)).long()  # (N,)
        items = torch.repeat_interleave(torch.arange(n), copies)  # (L_e,)
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        return items[order]

    def indices(step: int) -> torch.Tensor:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        while cumulative[-1] <= step:
            cumulative.append(cumulative[-1] + len(epoch_items(len(cumulative) - 1)) // batch_size)
        epoch = bisect.bisect_right(cumulative, step) - 1
        if last[0] != epoch:
            last[:] = [epoch, epoch_items(epoch)]
        position = step - cumulative[epoch]
        return last[1][position * batch_size:(position + 1) * batch_size]

    return indices


def class_aware_sampler(presence: torch.Tensor, batch_size: int, seed: int,
                        return_classes: bool = False) -> Callable[[int], torch.Tensor]:
    """``step -> indices`` (B,): class-aware sampling, a pure function of the step.

    Each sample picks a class uniformly among the classes held by some image, then an image
    holding it uniformly, from a generator seeded by ``(seed, step)``. With ``return_classes``
    the sampler returns ``(indices, classes)``.
    """
    presence = _check_presence(presence)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    pairs = torch.nonzero(presence.T)  # (P, 2) (class, image), sorted by class
    counts = presence.sum(0)  # (C,)
    offsets = torch.cumsum(counts, 0) - counts  # (C,) first pair of each class
    classes = torch.nonzero(counts).flatten()  # classes held by some image
    if len(classes) == 0:
        raise ValueError("presence holds no class in any image; class-aware sampling needs at least one")

    def indices(step: int):
        generator = torch.Generator().manual_seed(seed * 100_003 + step)
        drawn = classes[torch.randint(len(classes), (batch_size,), generator=generator)]  # (B,)
        within = (torch.rand(batch_size, generator=generator, dtype=torch.float64) * counts[drawn]).long()
        images = pairs[offsets[drawn] + within.clamp(max=counts[drawn] - 1), 1]  # (B,)
        return (images, drawn) if return_classes else images

    return indices
