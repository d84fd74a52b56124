"""Runtime set-up: device choice, seeding of every generator, threads, determinism.

Same seed on the CPU gives the same numbers: :func:`seed_everything` seeds Python, NumPy
and torch, and :func:`setup` also turns on torch's deterministic algorithms (warn-only, so
an op without a deterministic kernel still runs on a GPU).
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from kit.profiles import profile as active_profile


def seed_everything(seed: int) -> torch.Generator:
    """Seed ``random``, NumPy and torch (CPU and every CUDA device); return a CPU generator."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices
    return torch.Generator().manual_seed(seed)


def available_cores() -> int:
    """CPU cores this process may use (respects affinity masks and cgroup pinning)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS / Windows
        return max(1, os.cpu_count() or 1)


def device_for(profile: str | None = None) -> torch.device:
    """The device a profile runs on: CUDA for ``gpu``, the CPU otherwise.

    Asking for the ``gpu`` profile on a machine without CUDA is an error rather than a silent
    multi-hour CPU run.
    """
    name = profile or active_profile()
    if name == "gpu":
        if not torch.cuda.is_available():
            raise RuntimeError(
                "KIT_PROFILE=gpu needs a CUDA device and none is available; "
                "use KIT_PROFILE=cpu (or auto) on this machine"
            )
        return torch.device("cuda")
    return torch.device("cpu")


def setup(seed: int = 0, threads: int | None = None) -> torch.device:
    """One call at the top of a notebook: threads, determinism, seeds; returns the device.

    ``threads`` defaults to ``KIT_THREADS`` if set, else the cores available to the process
    (more threads than cores only slows small convolutions down).
    """
    if threads is None:
        threads = int(os.environ.get("KIT_THREADS", 0)) or available_cores()
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    seed_everything(seed)
    return device_for()
