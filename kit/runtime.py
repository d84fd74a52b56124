"""Runtime set-up: device choice, seeding of every generator, threads, determinism.

Same seed on the CPU gives the same numbers: :func:`seed_everything` seeds Python, NumPy
and torch, and :func:`setup` also turns on torch's deterministic algorithms (warn-only, so
an op without a deterministic kernel still runs on a GPU).
"""
from __future__ import annotations

import contextlib
import os
import random
import warnings

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


def parse_threads(value, source: str = "threads") -> int | None:
    """Check a thread count and return the number to give torch (``None``: use every core).

    ``value`` is an int (``setup(threads=...)``) or the text of ``KIT_THREADS``; ``source``
    names it in errors. Allowed: a whole number >= 1. ``None`` and an empty or blank
    ``KIT_THREADS`` (as ``KIT_THREADS= make book`` leaves it) mean unset. More threads than
    the cores available (:func:`available_cores`) only slow small convolutions down, and a
    huge count crashes torch's thread pool: it warns and returns the core count instead.
    """
    cores = available_cores()
    allowed = f"a whole number from 1 to {cores} (the cores available; more are capped to {cores})"
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f"{source} must be {allowed}, got {value!r}") from None
    elif isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{source} must be {allowed}, got {value!r} of type {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{source} must be {allowed}, got {value}")
    if value > cores:
        warnings.warn(f"{source}={value} is more than the {cores} cores available; using {cores} threads",
                      stacklevel=3)
        return cores
    return int(value)


def setup(seed: int = 0, threads: int | None = None) -> torch.device:
    """One call at the top of a notebook: threads, determinism, seeds; returns the device.

    ``threads`` defaults to ``KIT_THREADS`` if set (and not empty), else the cores available to
    the process; either is checked by :func:`parse_threads` (at most the cores available).
    """
    if threads is None:
        threads = parse_threads(os.environ.get("KIT_THREADS"), "KIT_THREADS")
    else:
        threads = parse_threads(threads, "threads")
    torch.set_num_threads(threads if threads is not None else available_cores())
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    seed_everything(seed)
    return device_for()


@contextlib.contextmanager
def evaluating(module: torch.nn.Module, grad: bool = False):
    """``with evaluating(model):`` puts ``model`` in eval mode (and, unless ``grad``, turns autograd
    off) for the block, then restores the train/eval mode it had, even when the block raises."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"evaluating() takes a torch.nn.Module, got {type(module).__name__}")
    was_training = module.training
    module.eval()
    try:
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            yield module
    finally:
        module.train(was_training)


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """The number of parameters of ``module`` (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
