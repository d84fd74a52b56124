"""Which items each training step sees: shuffled epochs, as a pure function of the step.

``kit.train.train`` asks for the batch of step ``s`` (``batch_for(step)``), so that a resumed
run sees exactly the batches an uninterrupted run would. :func:`epoch_sampler` gives the
indices of step ``s`` without any state: epoch ``e`` is one permutation drawn from a generator
seeded with ``(seed, e)``, cut into consecutive batches.
"""
from __future__ import annotations

from typing import Callable

import torch


def epoch_sampler(num_items: int, batch_size: int, seed: int, shuffle: bool = True,
                  drop_last: bool = True) -> Callable[[int], torch.Tensor]:
    """``step -> indices`` (LongTensor): epochs without replacement, a pure function of the step.

    Epoch ``e`` orders the items by ``torch.randperm(num_items)`` drawn from a generator seeded
    with ``seed * 100_003 + e`` (``shuffle=False``: ``0 .. num_items - 1``); step ``s`` is batch
    ``s % per_epoch`` of epoch ``s // per_epoch``. With ``drop_last`` an epoch has
    ``num_items // batch_size`` full batches and the leftover items of that epoch's order are
    skipped; without it the last batch of each epoch is shorter.
    """
    if not 1 <= batch_size <= num_items:
        raise ValueError(f"batch_size must be in 1..{num_items} (the number of items), got {batch_size}")
    per_epoch = num_items // batch_size if drop_last else -(-num_items // batch_size)

    def indices(step: int) -> torch.Tensor:
        epoch, position = divmod(step, per_epoch)
        if shuffle:
            order = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        else:
            order = torch.arange(num_items)
        return order[position * batch_size:(position + 1) * batch_size]

    return indices
