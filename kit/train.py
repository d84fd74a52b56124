"""The training loop: progress bar, history, checkpoints that resume exactly, AMP on CUDA.

``train`` runs ``iterations`` optimisation steps. Everything it needs per step comes from
functions of the step number (``batch_for(step)``, ``loss_for(model, batch, step)``), so a
run that is interrupted and resumed from its checkpoint sees exactly the batches it would
have seen, and ends with the same weights as an uninterrupted run (bit for bit on the CPU;
``tests/test_train_resume.py`` checks it with real SIGINT and SIGKILL sent to a subprocess
training a BatchNorm + dropout model).

How a resume stays the same run:

- **Stop lands on a step boundary.** JupyterLab's Stop sends SIGINT to the kernel process,
  and ipykernel runs the cell in the main thread with Python's default handler, which raises
  ``KeyboardInterrupt`` wherever the step happens to be: after BatchNorm updated its running
  statistics, or after ``optimizer.step()``, so that a checkpoint written then would replay
  half a step. While the loop runs in the main thread, ``train`` therefore installs a SIGINT
  handler that only raises a flag (the previous handler is restored on the way out). The step
  in progress finishes (optimiser step, history row, ``on_step``); then the checkpoint is
  written at that step boundary and ``KeyboardInterrupt`` is raised, so Stop still stops the
  cell. A *second* SIGINT while the step finishes raises at once (for a step that hangs): the
  partial step is then not saved and the run resumes from the last checkpoint on disk, an
  earlier boundary. Outside the main thread no handler can be installed (``signal.signal``
  raises ``ValueError``) and SIGINT reaches the main thread, not the loop; a
  ``KeyboardInterrupt`` raised by ``on_step`` (a step boundary) is saved in every case.
- **Every generator is saved**: the torch CPU generator, every CUDA generator once CUDA is
  initialised, Python's ``random`` and NumPy's global state, and the ``torch.Generator``s the
  caller owns and names in ``generators`` (Gumbel noise, augmentation). ``epoch_sampler`` is
  a pure function of the step and needs nothing.
- **The checkpoint carries a checksum.** The file is one header line with the SHA-256 of the
  payload, then the payload (``torch.save`` bytes), written atomically. A file that fails
  the checksum, does not unpickle, is not a dict, lacks a key or does not load is reported
  (``unreadable ...; starting afresh``) and the run starts from scratch, with the model and
  optimiser exactly as they were: never a crash, never a half-loaded state.
- **The run key covers the whole configuration**: the caller's ``run_key`` plus the number
  of iterations, the optimiser class and every param group's hyper-parameters (all but
  ``params`` and the live ``lr``) with the shapes of its parameters, a fingerprint of
  ``lr_at`` evaluated at every step, ``grad_clip``, the AMP mode and device type, the names,
  shapes and dtypes of the model's state, and the names of ``generators``. A checkpoint of a
  different configuration (another schedule, another momentum) is ignored with a warning
  naming what differs, instead of resuming into mixed learning rates.

The checkpoint is written every ``checkpoint_every`` steps and at a Stop; it is deleted when
the run completes, so a finished notebook never silently reuses old weights. None of this
draws random numbers, so an uninterrupted run gives the same numbers as before.
"""
from __future__ import annotations

import array
import contextlib
import copy
import hashlib
import io
import json
import math
import random
import signal
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from kit.io import atomic_write_bytes

_HEADER = b"kit.train checkpoint v2 sha256="  # then 64 hex digits and a newline, then the payload
_REQUIRED = ("run_key", "step", "history", "model", "optimizer", "scaler", "rng")


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


# --- the run key -------------------------------------------------------------------------

def _plain(value):
    """``value`` as JSON-able data (tensors as lists, unknown objects by ``repr``)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _schedule_fingerprint(lr_at: Callable[[int], float] | None, iterations: int) -> str | None:
    """SHA-256 of ``lr_at(step)`` for every step, as float64 bytes (None: no schedule)."""
    if lr_at is None:
        return None
    return hashlib.sha256(array.array("d", [float(lr_at(s)) for s in range(iterations)]).tobytes()).hexdigest()


def _full_run_key(run_key: dict | None, model, optimizer, lr_at, iterations: int, grad_clip, amp_mode: str,
                  device: torch.device, generators: dict) -> dict:
    """Everything that decides the numbers of the run, as plain data (see the module docstring)."""
    groups = [{"hyper": {k: v for k, v in group.items() if k not in ("params", "lr")},
               "shapes": [list(p.shape) for p in group["params"]]} for group in optimizer.param_groups]
    return _plain({
        "caller": run_key or {}, "iterations": iterations,
        "optimizer": {"class": f"{type(optimizer).__module__}.{type(optimizer).__qualname__}", "groups": groups},
        "schedule": _schedule_fingerprint(lr_at, iterations), "grad_clip": grad_clip,
        "amp": amp_mode, "device": device.type,
        "model": [[name, list(t.shape), str(t.dtype)] for name, t in model.state_dict().items()],
        "generators": sorted(generators)})


def _key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


# --- generators --------------------------------------------------------------------------

def _rng_state(generators: dict[str, torch.Generator]) -> dict:
    """The state of every generator a step may draw from."""
    return {"torch_cpu": torch.get_rng_state(),
            "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            "python": random.getstate(), "numpy": np.random.get_state(),
            "generators": {name: g.get_state() for name, g in generators.items()}}


def _set_rng_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if state["torch_cuda"] is not None:
        torch.cuda.set_rng_state_all(state["torch_cuda"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if set(state["generators"]) != set(generators):
        raise KeyError(f"saved generators {sorted(state['generators'])}, passed {sorted(generators)}")
    for name, g in generators.items():
        g.set_state(state["generators"][name])


# --- checkpoint files --------------------------------------------------------------------

def _write_checkpoint(path: Path, state: object) -> None:
    """``state`` to ``path`` atomically: a header line with the payload's SHA-256, then the payload."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    atomic_write_bytes(path, _HEADER + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def _read_checkpoint(path: Path) -> dict:
    """The checked state in ``path``; ValueError saying why it cannot be used."""
    data = path.read_bytes()
    start = len(_HEADER) + 65  # header, 64 hex digits, newline
    if not data.startswith(_HEADER) or data[start - 1:start] != b"\n":
        raise ValueError("no kit.train v2 header (an older or foreign file)")
    if hashlib.sha256(data[start:]).hexdigest().encode() != data[len(_HEADER):start - 1]:
        raise ValueError("its SHA-256 checksum does not match (corrupted or truncated)")
    try:
        state = torch.load(io.BytesIO(data[start:]), map_location="cpu", weights_only=False)
    except Exception as error:
        raise ValueError(f"it does not unpickle ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict):
        raise ValueError(f"it holds a {type(state).__name__}, not a dict")
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise ValueError(f"it lacks the keys {missing}")
    return state


def _capture(model, optimizer, scaler, generators) -> dict:
    """Model, optimiser, scaler and generator states (references, not copies)."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "rng": _rng_state(generators)}


def _apply(state: dict, model, optimizer, scaler, generators) -> None:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"], generators)


def _resume(path: Path, key: dict, iterations: int, model, optimizer, scaler, generators) -> tuple[list, int]:
    """(history, first step) from the checkpoint at ``path``, or ([], 0) with a warning when unusable."""
    if not path.exists():
        return [], 0
    try:
        state = _read_checkpoint(path)
    except Exception as error:  # OSError too: a checkpoint never stops a run
        warnings.warn(f"checkpoint {path} is unreadable ({error}); starting afresh", stacklevel=3)
        return [], 0
    saved = state["run_key"] if isinstance(state["run_key"], dict) else {}
    if _key_digest(saved) != _key_digest(key):
        differs = sorted(k for k in set(saved) | set(key) if saved.get(k) != key.get(k)) or ["run_key"]
        warnings.warn(f"checkpoint {path} belongs to a different run (differs in: {', '.join(differs)}); "
                      "starting afresh", stacklevel=3)
        return [], 0
    step, history = state["step"], state["history"]
    if not (isinstance(step, int) and 0 <= step <= iterations and isinstance(history, list) and len(history) == step):
        warnings.warn(f"checkpoint {path} is unreadable (step {step!r} does not fit {iterations} iterations and "
                      "its history); starting afresh", stacklevel=3)
        return [], 0
    backup = copy.deepcopy(_capture(model, optimizer, scaler, generators))
    try:
        _apply(state, model, optimizer, scaler, generators)
    except Exception as error:
        _apply(backup, model, optimizer, scaler, generators)  # never half-loaded
        warnings.warn(f"checkpoint {path} is unreadable (it does not load: {type(error).__name__}: {error}); "
                      "starting afresh", stacklevel=3)
        return [], 0
    return history, step


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
    is called after each step (raise from it to stop). ``run_key`` names the run (sizes,
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
    amp_mode = "off" if autocast is contextlib.nullcontext else ("float16" if scaler is not None else "bfloat16")
    path = Path(checkpoint) if checkpoint is not None else None
    rows, start = [], 0
    if path is not None:
        key = _full_run_key(run_key, model, optimizer, lr_at, iterations, grad_clip, amp_mode, device, generators)
        rows, start = _resume(path, key, iterations, model, optimizer, scaler, generators)

    def snapshot(step: int) -> None:
        if path is not None:
            _write_checkpoint(path, {"run_key": key, "step": step, "history": rows,
                                     **_capture(model, optimizer, scaler, generators)})

    model.train()
    bar = tqdm(total=iterations, initial=start, desc=desc, disable=not progress, leave=True)
    at_boundary = True  # False while a step is half done
    try:
        with _StopAtStepBoundary() as stop:
            for step in range(start, iterations):
                at_boundary = False
                began = time.perf_counter()
                if lr_at is not None:
                    for group in optimizer.param_groups:
                        group["lr"] = lr_at(step) * group.get("lr_scale", 1.0)
                batch = batch_for(step)
                with autocast():
                    losses = loss_for(model, batch, step)
                _check_losses(losses, step)
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
                row = {"step": step, "loss": float(total.detach()),
                       **{k: float(v.detach()) for k, v in losses.items()},
                       "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - began}
                rows.append(row)
                at_boundary = True  # the step is complete: model, optimiser, generators and history agree
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.3f}")
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
