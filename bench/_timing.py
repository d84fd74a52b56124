"""The one timing helper the benchmark scripts share (run them as ``python bench/<script>.py``)."""
from __future__ import annotations

import statistics
import time


def time_call(fn, repeats: int = 3, reduce: str = "min") -> float:
    """Seconds per call of ``fn()``: one warm-up call, then ``repeats`` timed calls, reduced by
    ``min`` (the run least disturbed by the rest of the machine) or ``median``."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if reduce not in ("min", "median"):
        raise ValueError(f"reduce must be 'min' or 'median', got {reduce!r}")
    fn()  # warm-up: first-call allocations and lazy initialisation
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times) if reduce == "min" else statistics.median(times)


def loss_forward_backward(loss, logits, labels):
    """A call for :func:`time_call`: one forward and one backward of ``loss(logits, labels)``
    (``logits`` a leaf with ``requires_grad``; its gradient is cleared first)."""
    def call():
        logits.grad = None
        loss(logits, labels).backward()
    return call
