"""What every page does first: set up the run and show the sizes it runs at.

:func:`start` replaces the set-up cell each notebook used to repeat (threads, determinism,
seed, the figure style, one line saying where it runs); :func:`show_sizes` the size-table
display. This module sits at the top of the kit (it uses ``kit.viz``), below ``kit.book``.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from kit import runtime
from kit.profiles import PROFILES, profile
from kit.viz import style

LIST_SHOWN = 4  # a list value longer than this is abbreviated in the size table


def start(seed: int = 0, threads: int | None = None) -> torch.device:
    """Set up a notebook's run (:func:`kit.runtime.setup`), apply the kit's figure style, print
    the profile, device, torch version and thread count; return the device."""
    device = runtime.setup(seed=seed, threads=threads)
    style.apply()
    print(f"profile: {profile()}, device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    return device


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple)) and len(value) > LIST_SHOWN:
        shown = ", ".join(map(str, value[:LIST_SHOWN - 1]))
        return f"[{shown}, …, {value[-1]}] ({len(value)})"
    return str(value)


def sizes_table(sizes: Mapping[str, Mapping[str, Any]], active: str):
    """The size table as a pandas Styler: one row per profile, the active one in bold, long
    lists abbreviated (``[a, b, c, …, z] (n)``)."""
    import pandas as pd

    if active not in PROFILES:
        raise ValueError(f"active must be one of {PROFILES}, got {active!r}")
    frame = pd.DataFrame({p: {k: _short(v) for k, v in sizes[p].items()} for p in PROFILES}).T
    return frame.rename_axis("profile").style.apply(
        lambda row: ["font-weight: bold" if row.name == active else "" for _ in row], axis=1)


def show_sizes(sizes: Mapping[str, Mapping[str, Any]], cfg, seeds=None) -> None:
    """Display the size table (the active profile ``cfg.profile`` in bold), every abbreviated list
    in full below it, and the seeds of this run."""
    from IPython.display import Markdown, display

    display(sizes_table(sizes, cfg.profile))
    long = {(p, k): v for p in PROFILES for k, v in sizes[p].items()
            if isinstance(v, (list, tuple)) and len(v) > LIST_SHOWN}
    if long:
        display(Markdown("\n".join(f"- `{k}` at {p}: {list(v)}" for (p, k), v in long.items())))
    if seeds is not None:
        print(f"seeds of this run: {list(seeds)}")
