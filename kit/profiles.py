"""Scale profiles: one notebook, three sizes.

``KIT_PROFILE`` chooses the scale a notebook runs at:

=========  ==========================  =====================================
profile    who runs it                 budget per notebook
=========  ==========================  =====================================
``smoke``  CI under nbval, 2-core CPU  <= 30 s; every cell runs, no claims
``cpu``    a laptop, ``make book``     <= 5 min on 2 cores, >= 3 seeds
``gpu``    ``make study`` on one GPU   <= 5 min on one H100, >= 5 seeds
=========  ==========================  =====================================

``auto`` (the default) resolves to ``gpu`` when CUDA is available and ``cpu`` otherwise.
"""
from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any, Mapping

# The profiles, smallest scale first: the one list of them (kit.results checks records against it;
# a record of a later profile outranks an earlier one).
PROFILES = ("smoke", "cpu", "gpu")
_VALID = PROFILES + ("auto",)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve(name: str | None) -> str:
    """Turn a profile name (or ``auto``/``None``/empty) into one of :data:`PROFILES`."""
    value = (name or "auto").strip().lower()
    if value not in _VALID:
        raise ValueError(
            f"unknown profile {name!r}: KIT_PROFILE must be one of {', '.join(_VALID)}"
        )
    if value == "auto":
        return "gpu" if _cuda_available() else "cpu"
    return value


def profile() -> str:
    """The active profile, read from ``KIT_PROFILE`` (default ``auto``)."""
    return resolve(os.environ.get("KIT_PROFILE"))


def select(table: Mapping[str, Mapping[str, Any]], name: str | None = None) -> SimpleNamespace:
    """Pick the active profile's row from a notebook's size table.

    ``table`` maps each of ``smoke``/``cpu``/``gpu`` to a dict of sizes; all three rows must
    exist and name the same keys, so a reader sees exactly what changes between scales.
    Returns the row as a namespace with ``.profile`` added.
    """
    missing = [p for p in PROFILES if p not in table]
    extra = [p for p in table if p not in PROFILES]
    if missing or extra:
        raise ValueError(
            f"a size table needs exactly the rows {PROFILES}; missing {missing}, unexpected {extra}"
        )
    keys = {p: set(table[p]) for p in PROFILES}
    if len({frozenset(k) for k in keys.values()}) != 1:
        raise ValueError(f"every profile row must name the same sizes; got {keys}")
    active = resolve(name) if name is not None else profile()
    return SimpleNamespace(profile=active, **dict(table[active]))
