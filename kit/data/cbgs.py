"""DS sampling: class-balanced resampling by sample membership (P25, CBGS: Zhu et al. 2019, arXiv 1908.09492).

The "class-balanced sampling" of CBGS duplicates whole *samples* (LiDAR sweeps), not instances, and
it is not a loss weight. Let $S_c$ be the samples that contain class $c$ (at least one box of it),
$n_c = |S_c|$, $N_{dup} = \\sum_c n_c$ (a sample with k classes counts k times) and
$r_c = n_c / N_{dup}$. For each class, draw

$$\\Big\\lfloor n_c \\cdot \\frac{1/C}{r_c} \\Big\\rfloor = \\Big\\lfloor \\frac{N_{dup}}{C} \\Big\\rfloor$$

samples *with replacement* from $S_c$, and train on the concatenation. Every class is then present in
at least a 1/C share of the resampled set (more, through the other classes' draws: a sample drawn for
the bicycle also holds cars). In Det3D (``det3d/datasets/nuscenes/nuscenes.py``) and mmdet3d
(``CBGSDataset._get_sample_indices``) the count is computed in floating point as
``int(n_c * frac / r_c)``, which can fall one short of the exact floor; here it is exact integer
arithmetic. A class no sample contains gets no draws (the official code would divide by zero).
"""
from __future__ import annotations

import torch


def check_presence(presence: torch.Tensor) -> None:
    """``presence`` must be a (N, C) bool tensor, N >= 1 samples, C >= 1 classes."""
    if not isinstance(presence, torch.Tensor):
        raise TypeError(f"presence must be a torch.Tensor (N samples, C classes) of bool, got {type(presence).__name__}")
    if presence.dtype != torch.bool:
        raise TypeError(f"presence must be bool (sample i contains class c), got {presence.dtype}")
    if presence.dim() != 2 or presence.shape[0] < 1 or presence.shape[1] < 1:
        raise ValueError(f"presence must be (N, C) with N >= 1 samples and C >= 1 classes, got {tuple(presence.shape)}")


def draws_per_class(presence: torch.Tensor) -> int:
    """floor(N_dup / C): how many samples DS sampling draws for each class (N_dup = presence.sum())."""
    check_presence(presence)
    return int(presence.sum()) // presence.shape[1]


def class_balanced_indices(presence: torch.Tensor, seed: int) -> torch.Tensor:
    """Sample indices of the DS-resampled set (class by class, floor(N_dup / C) per present class).

    presence (N, C) bool -> (K,) long, K = floor(N_dup / C) * (classes present); block c of the
    result (in class order, absent classes skipped) is drawn uniformly with replacement from the
    samples containing class c, by a generator seeded with ``seed``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    per_class = draws_per_class(presence)
    generator = torch.Generator().manual_seed(seed)
    blocks = []
    for c in range(presence.shape[1]):
        members = presence[:, c].nonzero().flatten().cpu()  # (n_c,) the samples containing class c
        if len(members) == 0:
            continue
        blocks.append(members[torch.randint(len(members), (per_class,), generator=generator)])  # (per_class,)
    return torch.cat(blocks) if blocks else torch.zeros(0, dtype=torch.long)
