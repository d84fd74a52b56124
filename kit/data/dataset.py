"""The one base class of the generated datasets: length, device moves, subsets, batches.

A dataset is a dataclass holding its ``config`` and tensors whose first dimension is the
image: ``images`` (B, 3, H, W) uint8 first, then whatever the generator annotates (boxes,
label maps, masks, ...). :class:`GeneratedDataset` gives every one of them

- ``len(ds)``, ``ds.to(device)`` and ``ds.subset(indices)``, over every tensor field;
- ``ds.float_images(indices, device)``: images as floats in [0, 1] (any index, a slice too);
- ``ds.batch(indices, device)``: float images in [0, 1] and the dataset's targets
  (:meth:`GeneratedDataset.batch_targets`: ``labels[indices]`` unless the dataset says otherwise);
- ``ds.batch_for(batch_size, seed, device)``: ``step -> batch``, the training loop's
  ``batch_for``, drawing indices from :func:`kit.data.sampling.epoch_sampler`;
- ``ds.batches(...)``: the same batches as an iterator.

:func:`check_config` is the generators' one way of refusing a bad configuration.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, fields
from typing import Callable, Iterator

import torch

from kit.data.sampling import epoch_sampler


def check_config(config, checks) -> None:
    """Raise ``ValueError("<Config>: <message> (got <config>)")`` for the first failed ``(ok, message)``."""
    for ok, message in checks:
        if not ok:
            raise ValueError(f"{type(config).__name__}: {message} (got {config})")


@dataclass
class GeneratedDataset:
    """Base of the generated datasets: ``config`` plus tensor fields indexed by image (``images`` first)."""

    config: object
    images: torch.Tensor  # (B, 3, H, W) uint8

    def tensor_fields(self) -> list[str]:
        """Names of the fields indexed by image (every field but ``config``)."""
        return [f.name for f in fields(self) if f.name != "config"]

    def _map_tensors(self, function: Callable[[torch.Tensor], torch.Tensor]):
        return type(self)(self.config, **{name: function(getattr(self, name)) for name in self.tensor_fields()})

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device):
        """The same dataset with every tensor moved to ``device`` (for data held on the GPU)."""
        return self._map_tensors(lambda tensor: tensor.to(device))

    def subset(self, indices):
        """The images ``indices`` (in that order) with all their annotations, same config."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        return self._map_tensors(lambda tensor: tensor[indices])

    def batch_targets(self, indices: torch.Tensor, device) -> tuple:
        """What :meth:`batch` returns after the images: here ``(labels[indices],)`` on ``device``."""
        return (self.labels[indices].to(device),)

    def float_images(self, indices=slice(None), device: torch.device | str | None = None) -> torch.Tensor:
        """Images ``indices`` (indices, a list or a slice; default all) as floats in [0, 1] (B, 3, H, W) on ``device``."""
        if not isinstance(indices, slice):
            indices = torch.as_tensor(indices, dtype=torch.long, device=self.images.device)
        return self.images[indices].to(device=device).float().div_(255)

    def batch(self, indices, device: torch.device | str | None = None) -> tuple:
        """Float images in [0, 1] (B, 3, H, W) and then :meth:`batch_targets`, all on ``device``."""
        indices = torch.as_tensor(indices, dtype=torch.long, device=self.images.device)
        return (self.float_images(indices, device), *self.batch_targets(indices, device))

    def batch_for(self, batch_size: int, seed: int, device=None, shuffle: bool = True,
                  drop_last: bool = True) -> Callable[[int], tuple]:
        """``step -> batch``: the batch of training step ``step``, a pure function of the step.

        The indices are ``epoch_sampler(len(self), batch_size, seed, shuffle, drop_last)(step)``
        (:func:`kit.data.sampling.epoch_sampler`), so this is the notebooks'
        ``lambda step: ds.batch(sampler(step), device)``, and a resumed run sees the same batches.
        """
        sampler = epoch_sampler(len(self), batch_size, seed, shuffle=shuffle, drop_last=drop_last)
        return lambda step: self.batch(sampler(step), device)

    def batches(self, batch_size: int, seed: int, device=None, shuffle: bool = True, drop_last: bool = True,
                start_step: int = 0, steps: int | None = None) -> Iterator[tuple]:
        """The batches of steps ``start_step, start_step + 1, ...`` (:meth:`batch_for`): ``steps`` of
        them, or without end when ``steps`` is None (stop with ``zip``/``itertools.islice``)."""
        batch_at = self.batch_for(batch_size, seed, device, shuffle=shuffle, drop_last=drop_last)
        step_numbers = itertools.count(start_step) if steps is None else range(start_step, start_step + steps)
        return (batch_at(step) for step in step_numbers)
