"""The training loop: progress bar, history, checkpoints that resume exactly, AMP on CUDA.

``train`` runs ``iterations`` optimisation steps. Everything it needs per step comes from
functions of the step number (``batch_for(step)``, ``loss_for(model, batch, step)``), so a
run that is interrupted and resumed from its checkpoint sees exactly the batches it would
have seen, and ends with the same weights as an uninterrupted run (bit for bit on the CPU;
``tests/test_train_resume.py`` checks it with real SIGINT and SIGKILL sent to a subprocess
training a BatchNorm + dropout model). What the checkpoint holds and when it is refused is
:mod:`kit.checkpoint`'s part; this module is the loop.

**Stop lands on a step boundary.** JupyterLab's Stop sends SIGINT to the kernel process, and
ipykernel runs the cell in the main thread with Python's default handler, which raises
``KeyboardInterrupt`` wherever the step happens to be: after BatchNorm updated its running
statistics, or after ``optimizer.step()``, so that a checkpoint written then would replay half
a step. While the loop runs in the main thread, ``train`` therefore installs a SIGINT handler
that only raises a flag (the previous handler is restored on the way out). The step in
progress finishes (optimiser step, history row, ``on_step``); then the checkpoint is written at
that step boundary and ``KeyboardInterrupt`` is raised, so Stop still stops the cell. A
*second* SIGINT while the step finishes raises at once (for a step that hangs): the partial
step is then not saved and the run resumes from the last checkpoint on disk, an earlier
boundary. Outside the main thread no handler can be installed (``signal.signal`` raises
``ValueError``) and SIGINT reaches the main thread, not the loop; a ``KeyboardInterrupt``
raised by ``on_step`` (a step boundary) is saved in every case.

**What ``on_step`` collects.** The history rows are saved in the checkpoint, so what
``on_step(step, row)`` writes *into* ``row`` (as :func:`kit.experiment.evaluate_at` does) comes
back with the history after a resume. Anything it keeps elsewhere (a list in a closure) is not
saved: after a resume it holds only the steps this process ran. Keep per-step data in ``row``.

**Forking a run.** A branch that continues a trunk from step ``first`` (P20, P29) is a second
``train`` call on the trunk's weights and optimiser state, with ``iterations - first`` steps and
every function of the step shifted by ``first``: ``batch_for=lambda k: batch(first + k)``,
``lr_at=lambda k: lr(first + k)`` (and ``loss_for``, ``on_step`` likewise where they read the
step); then ``history["step"] += first``. Nothing in the loop draws random numbers, so trunk
plus branch is the straight run (bit for bit on the CPU; ``tests/test_train.py`` checks it).
A checkpoint of the branch names the branch (give its ``run_key`` the fork step).

The checkpoint is written every ``checkpoint_every`` steps and at a Stop; it is deleted when
the run completes, so a finished notebook never silently reuses old weights.
"""
from __future__ import annotations

import contextlib
import math
import signal
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from tqdm.auto import tqdm

from kit.checkpoint import capture, full_run_key, resume, write_checkpoint
from kit.data.sampling import epoch_sampler  # noqa: F401  (kit.train.epoch_sampler, as notebooks call it)


def param_groups(model: torch.nn.Module, slow: Callable[[str], bool] | None = None, slow_lr_scale: float = 0.1,
                 no_decay: Callable[[str, torch.nn.Parameter], bool] | None = None) -> list[dict]:
    """Optimizer param groups by parameter name: the usual ones, the ``slow`` ones (their learning
    rate times ``slow_lr_scale``, read by :func:`train`: e.g. DCN offsets, Deformable DETR's
    sampling offsets, at 0.1) and, if ``no_decay`` is given, those it picks get weight decay 0.

    ``slow(name)`` and ``no_decay(name, parameter)`` are predicates; empty groups are left out.
    Every trainable parameter is in exactly one group.
    """
    if not (isinstance(slow_lr_scale, (int, float)) and not isinstance(slow_lr_scale, bool) and slow_lr_scale > 0):
        raise ValueError(f"slow_lr_scale must be a number > 0, got {slow_lr_scale!r}")
    slow = slow or (lambda name: False)
    groups: dict[tuple[bool, bool], list] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            key = (bool(slow(name)), bool(no_decay and no_decay(name, parameter)))
            groups.setdefault(key, []).append(parameter)
    out = []
    for (is_slow, is_no_decay), params in sorted(groups.items()):
        group = {"params": params, "lr_scale": slow_lr_scale if is_slow else 1.0}
        if is_no_decay:
            group["weight_decay"] = 0.0
        out.append(group)
    return out


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


# --- the loop ----------------------------------------------------------------------------

class _StopAtStepBoundary:
    """While active in the main thread, the first SIGINT only sets ``requested``; a second raises.

    Outside the main thread nothing is installed (``signal.signal`` raises ValueError there).
    """

    def __enter__(self):
        self.requested, self.installed = False, False
        try:
            self.previous = signal.signal(signal.SIGINT, self._handle)
            self.installed = True
        except ValueError:  # not the main thread of the main interpreter
            pass
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt("second interrupt: stopped in the middle of a step")
        self.requested = True

    def __exit__(self, *exc):
        if self.installed:  # a handler installed from C reads as None and cannot be put back
            signal.signal(signal.SIGINT, self.previous if self.previous is not None else signal.default_int_handler)
        return False


def _check_losses(losses, step: int) -> None:
    """``losses`` must be a non-empty dict of one-element floating-point tensors."""
    if not isinstance(losses, Mapping):
        raise TypeError(f"step {step}: loss_for returned a {type(losses).__name__}; it must return a dict "
                        "{name: scalar loss tensor}")
    if not losses:
        raise ValueError(f"step {step}: loss_for returned an empty dict; it must return at least one "
                         "{name: scalar loss tensor}")
    for name, value in losses.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            kind = f"a {value.dtype} tensor" if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"
            raise TypeError(f"step {step}: loss {name!r} is {kind}; losses must be floating-point tensors "
                            "(keep them as tensors so they can be backpropagated)")
        if value.numel() != 1:
            raise ValueError(f"step {step}: loss {name!r} has shape {tuple(value.shape)}; losses must be scalars "
                             "(reduce them, e.g. with .mean() or .sum())")


def _check_generators(generators) -> dict[str, torch.Generator]:
    generators = {} if generators is None else generators
    if not isinstance(generators, Mapping) or not all(isinstance(g, torch.Generator) for g in generators.values()):
        raise TypeError(f"generators must be a dict {{name: torch.Generator}}, got {generators!r}")
    return dict(generators)


def _amp_mode(autocast, scaler) -> str:
    return "off" if autocast is contextlib.nullcontext else ("float16" if scaler is not None else "bfloat16")


def _set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """``lr`` into every param group, times the group's ``lr_scale`` (1 when it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def _total_loss(losses, step: int) -> torch.Tensor:
    """The sum of the checked loss terms; FloatingPointError naming them if it is not finite."""
    _check_losses(losses, step)
    total = sum(losses.values())
    if not torch.isfinite(total):
        terms = {k: float(v.detach()) for k, v in losses.items()}
        raise FloatingPointError(f"step {step}: the loss is not finite ({terms})")
    return total


def _optimise(total: torch.Tensor, model, optimizer, scaler, grad_clip: float | None) -> None:
    """Backward pass, optional gradient clipping, optimiser step (through the GradScaler for float16)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(total).backward()
        scaler.unscale_(optimizer)  # clip the true gradients
    else:
        total.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def train(model: torch.nn.Module, batch_for: Callable[[int], object],
          loss_for: Callable[[torch.nn.Module, object, int], dict], iterations: int,
          optimizer: torch.optim.Optimizer, lr_at: Callable[[int], float] | None = None,
          checkpoint: str | Path | None = None, checkpoint_every: int = 50, run_key: dict | None = None,
          amp: bool | None = None, grad_clip: float | None = None, desc: str = "train",
          on_step: Callable[[int, dict], None] | None = None, progress: bool = True,
          generators: dict[str, torch.Generator] | None = None) -> pd.DataFrame:
    """Train for ``iterations`` steps; return the history (one row per step) as a DataFrame.

    batch_for(step) -> batch; loss_for(model, batch, step) -> {name: scalar tensor} (the total
    loss is their sum); lr_at(step) sets every param group's learning rate (times the group's
    optional ``lr_scale``, e.g. 0.1 for DCN offset branches); on_step(step, row)
    is called after each step (raise from it to stop; what it writes into ``row`` is kept in the
    history and the checkpoint, see the module docstring). ``run_key`` names the run (sizes,
    method, seed); together with the rest of the configuration it decides whether a checkpoint
    may be resumed. ``generators`` names the ``torch.Generator``s the step functions draw from
    (their states are checkpointed with the global ones). A Stop (SIGINT) finishes the step in
    progress, saves the checkpoint and raises ``KeyboardInterrupt``; see the module docstring.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be an int >= 1 (steps between checkpoints), got {checkpoint_every!r}")
    generators = _check_generators(generators)
    device = next(model.parameters()).device
    autocast, scaler = amp_settings(device, amp)
    path = Path(checkpoint) if checkpoint is not None else None
    rows, start = [], 0
    if path is not None:
        key = full_run_key(run_key, model, optimizer, lr_at, iterations, grad_clip, _amp_mode(autocast, scaler),
                           device, generators)
        rows, start = resume(path, key, iterations, model, optimizer, scaler, generators)

    def snapshot(step: int) -> None:
        if path is not None:
            write_checkpoint(path, {"run_key": key, "step": step, "history": rows,
                                    **capture(model, optimizer, scaler, generators)})

    model.train()
    bar = tqdm(total=iterations, initial=start, desc=desc, disable=not progress, leave=True)
    at_boundary = True  # False while a step is half done
    try:
        with _StopAtStepBoundary() as stop:
            for step in range(start, iterations):
                at_boundary = False
                began = time.perf_counter()
                if lr_at is not None:
                    _set_learning_rate(optimizer, lr_at(step))
                batch = batch_for(step)
                with autocast():
                    losses = loss_for(model, batch, step)
                total = _total_loss(losses, step)
                _optimise(total, model, optimizer, scaler, grad_clip)
                row = {"step": step, "loss": float(total.detach()),
                       **{k: float(v.detach()) for k, v in losses.items()},
                       "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - began}
                rows.append(row)
                at_boundary = True  # the step is complete: model, optimiser, generators and history agree
                bar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)  # redrawn by update, at tqdm's own pace
                bar.update(1)
                if on_step is not None:
                    on_step(step, row)
                if path is not None and (step + 1) % checkpoint_every == 0 and step + 1 < iterations:
                    snapshot(step + 1)
                if stop.requested:
                    raise KeyboardInterrupt(f"stopped after step {step}; the checkpoint resumes at step {step + 1}")
    except KeyboardInterrupt:
        if at_boundary:
            snapshot(len(rows))
        elif path is not None:
            warnings.warn(f"interrupted in the middle of step {len(rows)}: that half step is not saved; "
                          f"{path} (if present) resumes from an earlier step boundary", stacklevel=2)
        raise
    finally:
        bar.close()
    if path is not None and path.exists():
        path.unlink()  # finished: nothing left to resume
    return pd.DataFrame(rows)
