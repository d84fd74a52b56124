"""Dataset Alternation Training (DAT) of CDCL (P33): which dataset a batch comes from, by step.

CDCL (Wang et al., arXiv 2103.11351) trains one network on D datasets with dataset-specific BN
(:mod:`kit.seg.dataset_bn`). Its DAT mechanism: in each training iteration the datasets take
turns, a mini-batch of dataset 0, then of dataset 1, ..., each forwarded through its own BN
branch (and its own classifier head), the D losses accumulated, L = sum_d L_d, and then ONE
backward pass and one optimiser step. Every iteration therefore sees every dataset once,
whatever the dataset sizes (a small dataset simply cycles through its epochs faster). No
official code was found; the order within an iteration (0, 1, ..., D-1) is our choice (the loss
is a sum, so it only changes which BN batch statistics are computed first: nothing).

Steps are counted two ways:
- a *batch step* t (one mini-batch of one dataset): dataset ``t % D`` and that dataset's own
  step ``t // D`` (:func:`dataset_at`, :func:`alternating_batch_for`);
- an *iteration* k (one optimiser step) = batch steps kD .. kD + D - 1 (:func:`iteration_batches`).
Everything is a pure function of the step, so a resumed run sees the same batches.

:func:`sampled_dataset_at` is NOT the paper: the "DAB without DAT" ablation of the catalog, one
dataset per step drawn with probabilities proportional to given weights (e.g. dataset sizes).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from kit.seg.dataset_bn import using_dataset

__all__ = ["dataset_at", "alternating_batch_for", "iteration_batches", "dat_loss", "sampled_dataset_at"]


def _check_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def _check_step(step, name: str = "step") -> int:
    step = _check_count(step, name)
    if step < 0:
        raise ValueError(f"{name} must be >= 0, got {step}")
    return step


def dataset_at(step: int, num_datasets: int) -> int:
    """The dataset of batch step ``step`` under DAT: round robin, ``step % num_datasets``."""
    num_datasets = _check_count(num_datasets, "num_datasets")
    if num_datasets < 1:
        raise ValueError(f"num_datasets must be >= 1, got {num_datasets}")
    return _check_step(step) % num_datasets


def _check_batch_fors(batch_fors) -> list:
    if not isinstance(batch_fors, (list, tuple)) or not batch_fors:
        raise ValueError(f"batch_fors must be a non-empty list of per-dataset step -> batch functions "
                         f"(GeneratedDataset.batch_for), got {type(batch_fors).__name__} "
                         f"of length {len(batch_fors) if isinstance(batch_fors, (list, tuple)) else 'n/a'}")
    for d, batch_for in enumerate(batch_fors):
        if not callable(batch_for):
            raise TypeError(f"batch_fors[{d}] must be callable (step -> batch), got {type(batch_for).__name__}")
    return list(batch_fors)


def alternating_batch_for(batch_fors: Sequence[Callable[[int], tuple]]) -> Callable[[int], tuple]:
    """``step -> (dataset_index, batch)``: batch step t takes dataset d = t % D and its batch
    ``batch_fors[d](t // D)`` (each dataset advances through its own epochs)."""
    batch_fors = _check_batch_fors(batch_fors)
    num_datasets = len(batch_fors)

    def batch_for(step: int) -> tuple:
        dataset = dataset_at(step, num_datasets)
        return dataset, batch_fors[dataset](step // num_datasets)

    return batch_for


def iteration_batches(batch_fors: Sequence[Callable[[int], tuple]]) -> Callable[[int], list]:
    """``iteration -> [(0, batch), (1, batch), ..., (D-1, batch)]``: the D mini-batches of one
    DAT iteration, dataset d's batch being ``batch_fors[d](iteration)``."""
    batch_for = alternating_batch_for(batch_fors)
    num_datasets = len(batch_fors)

    def batches(iteration: int) -> list:
        iteration = _check_step(iteration, "iteration")
        return [batch_for(iteration * num_datasets + d) for d in range(num_datasets)]

    return batches


def dat_loss(model, batches: Sequence[tuple], loss_of: Callable) -> torch.Tensor:
    """L = sum_d L_d over one iteration's ``[(dataset_index, batch), ...]``, each loss
    ``loss_of(model, dataset_index, batch)`` computed with that dataset's BN branch active
    (:func:`kit.seg.dataset_bn.using_dataset`); call ``.backward()`` once on the result."""
    if not batches:
        raise ValueError("batches must hold at least one (dataset_index, batch) pair")
    total = None
    for dataset, batch in batches:
        with using_dataset(model, dataset):
            loss = loss_of(model, dataset, batch)
        total = loss if total is None else total + loss
    return total


def sampled_dataset_at(step: int, weights: Sequence[float], seed: int) -> int:
    """Ablation, not DAT: the dataset of step ``step`` drawn with probability proportional to
    ``weights`` (e.g. dataset sizes), a pure function of (seed, step)."""
    step, seed = _check_step(step), _check_step(seed, "seed")
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 1 or weights.size == 0 or not np.isfinite(weights).all() or (weights < 0).any() \
            or weights.sum() <= 0:
        raise ValueError(f"weights must be a non-empty 1-d sequence of finite values >= 0 with a positive sum, "
                         f"got {weights.tolist()}")
    rng = np.random.default_rng([seed, step])
    return int(rng.choice(weights.size, p=weights / weights.sum()))
