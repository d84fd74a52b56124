"""Time the kit's log-domain Sinkhorn (kit.det.optimal_transport.sinkhorn_log) beside POT's.

The optimal-transport label assignment of OTA and Dynamic Sparse R-CNN solves one small problem
per image (and per stage): G objects plus the background supply N candidates (proposals or
anchors). Here: G + 1 rows x N columns, costs in [0, 10), epsilon 0.1, 50 iterations (OTA's), the
background row supplying N - sum(k); POT's ``ot.bregman.sinkhorn_log`` on the same torch tensors
with its early stop switched off (``stopThr=0``), so both run the same 50 iterations. Also the
largest difference between the two plans. Threads: ``KIT_THREADS`` if set, else the cores
available (``kit.setup``). Runs in a few seconds.
"""
from __future__ import annotations

import warnings

import ot
import torch

import kit
from kit.det.optimal_transport import sinkhorn_log
from _timing import time_call  # bench/_timing.py, beside this script


def problem(num_objects: int, num_candidates: int, k: float, generator: torch.Generator):
    """cost (G + 1, N), supply (G + 1,) with the background last, demand (N,) of ones (float64)."""
    cost = 10 * torch.rand(num_objects + 1, num_candidates, generator=generator, dtype=torch.float64)
    supply = torch.full((num_objects + 1,), float(k), dtype=torch.float64)
    supply[-1] = num_candidates - k * num_objects
    return cost, supply, torch.ones(num_candidates, dtype=torch.float64)


def main():
    kit.setup(0)
    generator = torch.Generator().manual_seed(0)
    epsilon, iterations = 0.1, 50
    print(f"log-domain Sinkhorn, epsilon {epsilon}, {iterations} iterations, {torch.get_num_threads()} thread(s)")
    print(f"{'objects':>8} {'candidates':>11} {'kit':>9} {'POT':>9} {'ratio':>6} {'max |plan diff|':>16}")
    for num_objects, num_candidates in ((8, 64), (20, 300), (100, 1000)):
        cost, supply, demand = problem(num_objects, num_candidates, 3.0, generator)
        kit_plan = sinkhorn_log(cost, supply, demand, epsilon, iterations)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # POT warns that 50 iterations did not converge to stopThr=0
            pot_plan = ot.bregman.sinkhorn_log(supply, demand, cost, epsilon, numItermax=iterations, stopThr=0.0)
            pot_ms = 1000 * time_call(lambda: ot.bregman.sinkhorn_log(supply, demand, cost, epsilon,
                                                                      numItermax=iterations, stopThr=0.0))
        kit_ms = 1000 * time_call(lambda: sinkhorn_log(cost, supply, demand, epsilon, iterations))
        difference = float((kit_plan - pot_plan).abs().max())
        print(f"{num_objects:>8} {num_candidates:>11} {kit_ms:>7.2f}ms {pot_ms:>7.2f}ms {kit_ms / pot_ms:>5.1f}x "
              f"{difference:>16.2e}")
    print("ratio: kit / POT; the plans are in supply units (rows sum to the supplies, columns to 1)")


if __name__ == "__main__":
    main()
