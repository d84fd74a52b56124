"""The training loop: progress bar, history, checkpoints that resume, AMP on CUDA.

``train`` runs ``iterations`` optimisation steps. Everything it needs per step comes from
functions of the step number (``batch_for(step)``, ``loss_for(model, batch, step)``), so a
run that is interrupted and resumed from its checkpoint sees exactly the batches it would
have seen, and ends with the same weights as an uninterrupted run (on the CPU; checked by a
test). While training, the checkpoint is written every ``checkpoint_every`` steps and when
the run is interrupted (the Stop button is a ``KeyboardInterrupt``); it is deleted when the
run completes, so a finished notebook never silently reuses old weights.
"""
from __future__ import annotations

import contextlib
import io
import math
import time
import warnings
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from tqdm.auto import tqdm

from kit.data.cache import atomic_write_bytes


def epoch_sampler(num_items: int, batch_size: int, seed: int) -> Callable[[int], torch.Tensor]:
    """``step -> indices``: shuffled epochs without replacement, a pure function of the step.

    Epoch ``e`` is a permutation drawn from a generator seeded with ``(seed, e)``.
    """
    if not 1 <= batch_size <= num_items:
        raise ValueError(f"batch_size must be in 1..{num_items} (the number of items), got {batch_size}")
    per_epoch = num_items // batch_size

    def indices(step: int) -> torch.Tensor:
        epoch, position = divmod(step, per_epoch)
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(num_items, generator=generator)
        return order[position * batch_size:(position + 1) * batch_size]

    return indices


def warmup_cosine(base_lr: float, iterations: int, warmup: int = 0, final_fraction: float = 0.05):
    """Learning rate per step: linear warm-up, then cosine decay to ``final_fraction * base_lr``."""

    def lr(step: int) -> float:
        if step < warmup:
            return base_lr * (0.1 + 0.9 * step / warmup)
        progress = (step - warmup) / max(1, iterations - warmup)
        return base_lr * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))

    return lr


def amp_settings(device: torch.device, enabled: bool | None = None):
    """(autocast context factory, GradScaler or None) for ``device``.

    AMP is on by default on CUDA only: bfloat16 where supported (no scaler needed), else float16
    with a GradScaler. On the CPU training runs in float32.
    """
    use = device.type == "cuda" if enabled is None else enabled
    if not use:
        return contextlib.nullcontext, None
    if device.type != "cuda":
        raise ValueError("AMP is only supported on CUDA devices here; pass amp=False on the CPU")
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


def _save_checkpoint(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load_checkpoint(path: Path, run_key: dict) -> dict | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        warnings.warn(f"checkpoint {path} is unreadable; starting from scratch", stacklevel=3)
        return None
    if state.get("run_key") != run_key:
        warnings.warn(f"checkpoint {path} belongs to a different run; starting from scratch", stacklevel=3)
        return None
    return state


def train(model: torch.nn.Module, batch_for: Callable[[int], object],
          loss_for: Callable[[torch.nn.Module, object, int], dict], iterations: int,
          optimizer: torch.optim.Optimizer, lr_at: Callable[[int], float] | None = None,
          checkpoint: str | Path | None = None, checkpoint_every: int = 50, run_key: dict | None = None,
          amp: bool | None = None, grad_clip: float | None = None, desc: str = "train",
          on_step: Callable[[int, dict], None] | None = None, progress: bool = True) -> pd.DataFrame:
    """Train for ``iterations`` steps; return the history (one row per step) as a DataFrame.

    batch_for(step) -> batch; loss_for(model, batch, step) -> {name: scalar tensor} (the total
    loss is their sum); lr_at(step) sets every param group's learning rate (times the group's
    optional ``lr_scale``, e.g. 0.1 for DCN offset branches); on_step(step, row)
    is called after each step (raise from it to stop). ``run_key`` identifies the run: a
    checkpoint written by a different run is ignored.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    device = next(model.parameters()).device
    autocast, scaler = amp_settings(device, amp)
    run_key = dict(run_key or {}, iterations=iterations)
    path = Path(checkpoint) if checkpoint is not None else None
    rows, start = [], 0
    state = _load_checkpoint(path, run_key) if path is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        rows, start = state["history"], state["step"]

    def snapshot(step: int) -> None:
        if path is not None:
            _save_checkpoint(path, {
                "run_key": run_key, "step": step, "history": rows, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "rng_cpu": torch.get_rng_state()})

    model.train()
    bar = tqdm(total=iterations, initial=start, desc=desc, disable=not progress, leave=True)
    step = start
    try:
        for step in range(start, iterations):
            began = time.perf_counter()
            if lr_at is not None:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step) * group.get("lr_scale", 1.0)
            batch = batch_for(step)
            with autocast():
                losses = loss_for(model, batch, step)
            total = sum(losses.values())
            if not torch.isfinite(total):
                terms = {k: float(v.detach()) for k, v in losses.items()}
                raise FloatingPointError(f"step {step}: the loss is not finite ({terms})")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(total).backward()
                scaler.unscale_(optimizer)
            else:
                total.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            row = {"step": step, "loss": float(total.detach()), **{k: float(v.detach()) for k, v in losses.items()},
                   "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - began}
            rows.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}")
            if on_step is not None:
                on_step(step, row)
            if path is not None and (step + 1) % checkpoint_every == 0 and step + 1 < iterations:
                snapshot(step + 1)
    except KeyboardInterrupt:
        snapshot(len(rows))
        bar.close()
        raise
    bar.close()
    if path is not None and path.exists():
        path.unlink()  # finished: nothing left to resume
    return pd.DataFrame(rows)
