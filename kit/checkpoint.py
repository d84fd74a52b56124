"""Training checkpoints that resume exactly: the run key, every generator, a checksummed file.

:func:`kit.train.train` writes a checkpoint every ``checkpoint_every`` steps and at a Stop,
and starts a run from the one it finds (:func:`resume`) only if it belongs to the same run and
loads completely:

- **Every generator is saved** (:func:`rng_state`): the torch CPU generator, every CUDA
  generator once CUDA is initialised, Python's ``random`` and NumPy's global state, and the
  ``torch.Generator``s the caller owns and names in ``generators`` (Gumbel noise,
  augmentation).
- **The file carries a checksum** (:func:`write_checkpoint`): one header line with the
  SHA-256 of the payload, then the payload (``torch.save`` bytes), written atomically. A file
  that fails the checksum, does not unpickle, is not a dict, lacks a key or does not load is
  reported (``unreadable ...; starting afresh``) and the run starts from scratch, with the
  model and optimiser exactly as they were: never a crash, never a half-loaded state.
- **The run key covers the whole configuration** (:func:`full_run_key`): the caller's
  ``run_key`` plus the number of iterations, the optimiser class and every param group's
  hyper-parameters (all but ``params`` and the live ``lr``) with the shapes of its
  parameters, a fingerprint of ``lr_at`` evaluated at every step, ``grad_clip``, the AMP mode
  and device type, the names, shapes and dtypes of the model's state, and the names of
  ``generators``. A checkpoint of a different configuration (another schedule, another
  momentum) is ignored with a warning naming what differs, instead of resuming into mixed
  learning rates.

None of this draws random numbers, so a run with a checkpoint gives the numbers of a run without.
"""
from __future__ import annotations

import array
import copy
import hashlib
import io
import json
import random
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from kit.io import atomic_write_bytes

HEADER = b"kit.train checkpoint v2 sha256="  # then 64 hex digits and a newline, then the payload
REQUIRED_KEYS = ("run_key", "step", "history", "model", "optimizer", "scaler", "rng")


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


def full_run_key(run_key: dict | None, model, optimizer, lr_at, iterations: int, grad_clip, amp_mode: str,
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

def rng_state(generators: dict[str, torch.Generator]) -> dict:
    """The state of every generator a step may draw from."""
    return {"torch_cpu": torch.get_rng_state(),
            "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            "python": random.getstate(), "numpy": np.random.get_state(),
            "generators": {name: g.get_state() for name, g in generators.items()}}


def set_rng_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    """Put back what :func:`rng_state` saved (the same ``generators`` by name)."""
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

def write_checkpoint(path: Path, state: object) -> None:
    """``state`` to ``path`` atomically: a header line with the payload's SHA-256, then the payload."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    atomic_write_bytes(path, HEADER + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def read_checkpoint(path: Path) -> dict:
    """The checked state in ``path``; ValueError saying why it cannot be used."""
    data = path.read_bytes()
    start = len(HEADER) + 65  # header, 64 hex digits, newline
    if not data.startswith(HEADER) or data[start - 1:start] != b"\n":
        raise ValueError("no kit.train v2 header (an older or foreign file)")
    if hashlib.sha256(data[start:]).hexdigest().encode() != data[len(HEADER):start - 1]:
        raise ValueError("its SHA-256 checksum does not match (corrupted or truncated)")
    try:
        state = torch.load(io.BytesIO(data[start:]), map_location="cpu", weights_only=False)
    except Exception as error:
        raise ValueError(f"it does not unpickle ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict):
        raise ValueError(f"it holds a {type(state).__name__}, not a dict")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"it lacks the keys {missing}")
    return state


def capture(model, optimizer, scaler, generators) -> dict:
    """Model, optimiser, scaler and generator states (references, not copies)."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng_state(generators)}


def _apply(state: dict, model, optimizer, scaler, generators) -> None:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"], generators)


def resume(path: Path, key: dict, iterations: int, model, optimizer, scaler, generators) -> tuple[list, int]:
    """(history, first step) from the checkpoint at ``path``, or ([], 0) with a warning when unusable.

    A usable checkpoint is loaded into ``model``, ``optimizer``, ``scaler`` and the generators;
    an unusable one leaves them exactly as they were.
    """
    if not path.exists():
        return [], 0
    try:
        state = read_checkpoint(path)
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
    backup = copy.deepcopy(capture(model, optimizer, scaler, generators))
    try:
        _apply(state, model, optimizer, scaler, generators)
    except Exception as error:
        _apply(backup, model, optimizer, scaler, generators)  # never half-loaded
        warnings.warn(f"checkpoint {path} is unreadable (it does not load: {type(error).__name__}: {error}); "
                      "starting afresh", stacklevel=3)
        return [], 0
    return history, step
