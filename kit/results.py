"""Recording a notebook's results for the scoreboard: ``results/<profile>/<paper>.json``.

A record holds what the scoreboard shows and what a reader needs to trust it: the paper id,
the claim, the paper's numbers, our per-method metrics (every seed, plus mean and std), the
verdict, the profile, device, seeds, wall time and library versions.
"""
from __future__ import annotations

import json
import math
import platform
import re
import statistics
import time
from pathlib import Path

import torch

from kit import paths
from kit.data.cache import atomic_write_bytes

_PAPER_ID = re.compile(r"^P\d{2}$")
VERDICTS = ("reproduced", "partly reproduced", "not reproduced", "inconclusive", "no claim tested")


def summarize(values: list[float]) -> dict:
    """Mean and sample std (0 for one value) of a list of per-seed numbers, with the values."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("summarize needs at least one value")
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"values": values, "mean": statistics.fmean(values), "std": std}


def device_name(device: torch.device | str) -> str:
    """A readable device name: the GPU's model, or the CPU with its thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def record(paper: str, profile: str, device, seeds: list[int], metrics: dict, claim: str,
           paper_numbers: dict, verdict: str, headline: str, wall_seconds: float,
           notes: str = "", folder: Path | None = None) -> Path:
    """Write the results record; returns its path.

    metrics: method -> metric -> list of per-seed values (summarised here). headline: the
    metric the scoreboard shows (must be in every method), a fraction in [0, 1] (AP, mIoU,
    accuracy; the scoreboard prints it in %). verdict: one of :data:`VERDICTS`.
    """
    if not _PAPER_ID.match(paper):
        raise ValueError(f"paper must look like 'P01', got {paper!r}")
    if profile not in ("smoke", "cpu", "gpu"):
        raise ValueError(f"profile must be smoke, cpu or gpu, got {profile!r}")
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    summary = {}
    for method, by_metric in metrics.items():
        summary[method] = {}
        for name, values in by_metric.items():
            values = values if isinstance(values, (list, tuple)) else [values]
            if len(values) != len(seeds):
                raise ValueError(f"{method}/{name}: {len(values)} values for {len(seeds)} seeds")
            if any(not math.isfinite(float(v)) for v in values):
                raise ValueError(f"{method}/{name}: non-finite values {values}")
            summary[method][name] = summarize(values)
        if headline not in summary[method]:
            raise ValueError(f"headline metric {headline!r} missing for method {method!r}")
        values = summary[method][headline]["values"]
        if any(not 0.0 <= v <= 1.0 for v in values):
            raise ValueError(f"{method}/{headline}: the headline metric must be a fraction in [0, 1] "
                             f"(the scoreboard shows it in %), got {values}; divide percentages by 100")
    entry = {
        "paper": paper, "profile": profile, "device": device_name(device), "seeds": list(seeds),
        "claim": claim, "paper_numbers": paper_numbers, "metrics": summary, "headline": headline,
        "verdict": verdict, "notes": notes, "wall_seconds": round(float(wall_seconds), 1),
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": _version("torchvision"), "kit": _version("kit")},
    }
    folder = Path(folder) if folder is not None else paths.results_dir() / profile
    path = folder / f"{paper}.json"
    atomic_write_bytes(path, (json.dumps(entry, indent=2, sort_keys=False) + "\n").encode())
    return path


def load_all(folder: Path | None = None) -> list[dict]:
    """Every record under ``results/`` (all profiles)."""
    folder = Path(folder) if folder is not None else paths.results_dir()
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*/P*.json"))]


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"
