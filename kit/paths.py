"""Where the kit keeps things: the repository root and its data/results folders.

The root is the folder that holds ``kit/`` (the kit is installed editable), or ``KIT_ROOT``
when that is set, so a notebook finds ``data/`` and ``results/`` from any working directory.
"""
from __future__ import annotations

import os
from pathlib import Path


def root() -> Path:
    """The repository root (``KIT_ROOT`` overrides it)."""
    env = os.environ.get("KIT_ROOT")
    return Path(env).resolve() if env else Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """``data/`` under the root: generated datasets and checkpoints (gitignored caches)."""
    return root() / "data"


def results_dir() -> Path:
    """``results/`` under the root: one JSON record per paper and profile."""
    return root() / "results"
