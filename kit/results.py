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
from typing import Sequence

import numpy as np
import torch

from kit import paths
from kit.io import atomic_write_bytes
from kit.profiles import PROFILES
from kit.verdicts import PAPER_VERDICTS, paper_verdict, signed_differences, t_interval, verdict_of

_PAPER_ID = re.compile(r"^P\d{2}$")
# The kit's verdicts (kit.verdicts), plus "no claim tested" for a page that measures without a claim.
VERDICTS = PAPER_VERDICTS + ("no claim tested",)
_COMPARISON_FIELDS = ("claim", "baseline", "method", "metric", "direction", "margin", "n_seeds", "seeds",
                      "baseline_values", "method_values", "difference_mean", "interval_95", "engaged", "verdict")


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


def _check_values(where: str, values, seeds: list) -> list:
    """The per-seed values of one metric as a list; numbers only, one per seed, all finite."""
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    if len(values) != len(seeds):
        raise ValueError(f"{where}: {len(values)} values for {len(seeds)} seeds; give one value per seed")
    for value in values:
        is_bool = isinstance(value, (bool, np.bool_)) or (torch.is_tensor(value) and value.dtype == torch.bool)
        try:
            number = None if is_bool or isinstance(value, (str, bytes)) else float(value)
        except (TypeError, ValueError):
            number = None
        if number is None:
            raise TypeError(f"{where}: metric values must be numbers (one per seed), got {value!r} "
                            f"of type {type(value).__name__} in {values}")
    if any(not math.isfinite(float(v)) for v in values):
        raise ValueError(f"{where}: non-finite values {values}; every recorded value must be a finite number")
    return values


def _check_record_inputs(seeds, metrics, paper_numbers, wall_seconds) -> None:
    """Refuse what would make a record wrong or unreadable (cheap: a few checks per record)."""
    if not isinstance(metrics, dict) or not metrics:
        raise ValueError(f"metrics must be a non-empty dict method -> metric -> per-seed values, got {metrics!r}")
    if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in seeds):
        raise TypeError(f"seeds must be ints, got {list(seeds)}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct (one run per seed), got duplicates in {list(seeds)}")
    if not isinstance(paper_numbers, dict):
        raise TypeError(f"paper_numbers must be a dict label -> number or text, got {type(paper_numbers).__name__}")
    for label, number in paper_numbers.items():
        if isinstance(number, float) and not math.isfinite(number):
            raise ValueError(f"paper_numbers[{label!r}] is {number}; give the paper's number, or text such as "
                             "'not reported'")
    if isinstance(wall_seconds, bool) or not math.isfinite(float(wall_seconds)) or float(wall_seconds) < 0:
        raise ValueError(f"wall_seconds must be a finite number of seconds >= 0, got {wall_seconds!r}")


def check_comparisons(comparisons: list, verdict: str, seeds: list, metrics: dict) -> None:
    """A record's comparisons must be what :func:`kit.verdicts.compare` makes of its own metrics.

    Each comparison's values are the record's per-seed values of its arms; its mean difference,
    interval and verdict are recomputed with the kit's rule; the paper's verdict must be
    :func:`kit.verdicts.paper_verdict` of them. A record cannot carry a verdict the rule does
    not give.
    """
    if not isinstance(comparisons, list) or not comparisons:
        raise ValueError("comparisons must be a non-empty list (one entry per declared claim, "
                         "from kit.experiment.compare)")
    for index, c in enumerate(comparisons):
        where = f"comparisons[{index}] ({c.get('claim', '?')!r})" if isinstance(c, dict) else f"comparisons[{index}]"
        missing = [k for k in _COMPARISON_FIELDS if not isinstance(c, dict) or k not in c]
        if missing:
            raise ValueError(f"{where} lacks {missing}; build it with kit.experiment.compare")
        for arm, key in ((c["baseline"], "baseline_values"), (c["method"], "method_values")):
            if arm not in metrics or c["metric"] not in metrics[arm]:
                raise ValueError(f"{where}: the record has no metric {c['metric']!r} for arm {arm!r}")
            recorded = dict(zip(seeds, metrics[arm][c["metric"]]))
            if [recorded.get(s) for s in c["seeds"]] != list(c[key]) or c["n_seeds"] != len(c["seeds"]):
                raise ValueError(f"{where}: its {key} are not the record's per-seed {arm}/{c['metric']} values")
        if "floor_values" in c:  # the floor's metric may be another one than the claim's
            floor_metric = c.get("floor_metric", c["metric"])
            if c["baseline"] not in metrics or floor_metric not in metrics[c["baseline"]]:
                raise ValueError(f"{where}: the record has no metric {floor_metric!r} for arm {c['baseline']!r}")
            recorded = dict(zip(seeds, metrics[c["baseline"]][floor_metric]))
            if [recorded.get(s) for s in c["seeds"]] != list(c["floor_values"]):
                raise ValueError(f"{where}: its floor_values are not the record's per-seed "
                                 f"{c['baseline']}/{floor_metric} values")
        differences = signed_differences(c["direction"], c["baseline_values"], c["method_values"])
        interval = t_interval(differences)
        stored = c["interval_95"]
        same_interval = (interval is None and stored is None) or (
            interval is not None and stored is not None
            and all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(interval, stored)))
        if not same_interval or not math.isclose(c["difference_mean"], sum(differences) / len(differences),
                                                 rel_tol=1e-9, abs_tol=1e-12):
            raise ValueError(f"{where}: difference_mean / interval_95 do not follow from its values")
        if verdict_of(c) != c["verdict"]:
            raise ValueError(f"{where}: verdict {c['verdict']!r} does not follow from the rule "
                             f"(which gives {verdict_of(c)!r})")
    if paper_verdict(comparisons) != verdict:
        raise ValueError(f"verdict {verdict!r} does not follow from the comparisons "
                         f"(the rule gives {paper_verdict(comparisons)!r})")


def machine() -> dict:
    """What a number's last digits depend on: CPU model, cores, threads, BLAS / oneDNN build."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    config = torch.__config__.show()
    blas = next((part.split("=", 1)[1] for line in config.splitlines() for part in line.replace(",", " ").split()
                 if part.startswith("BLAS_INFO=")), "unknown")
    onednn = next((line.strip(" -").split(" (")[0] for line in config.splitlines()
                   if "MKL-DNN v" in line or "oneDNN v" in line), "unknown")  # e.g. "Intel(R) MKL-DNN v3.12.0"
    from kit.runtime import available_cores

    return {"cpu": model, "cores": available_cores(), "threads": torch.get_num_threads(), "blas": blas,
            "onednn": onednn, "isa": torch.backends.cpu.get_cpu_capability(),
            "cuda": torch.version.cuda if torch.cuda.is_available() else None}


def record(paper: str, profile: str, device, seeds: list[int], metrics: dict, claim: str,
           paper_numbers: dict, verdict: str, headline: str, wall_seconds: float,
           notes: str = "", folder: Path | None = None, comparisons: list | None = None) -> Path:
    """Write the results record; returns its path.

    metrics: method -> metric -> list of per-seed values (summarised here). headline: the
    metric the scoreboard shows (must be in every method), a fraction in [0, 1] (AP, mIoU,
    accuracy; the scoreboard prints it in %). verdict: one of :data:`VERDICTS`. seeds must be
    distinct ints; values, ``paper_numbers`` and ``wall_seconds`` finite (the file is standard
    JSON: no NaN or Infinity). comparisons: one :func:`kit.verdicts.compare` result per declared
    claim, required for every verdict but ``no claim tested``; the verdict must follow from them by
    the kit's rule (:func:`check_comparisons`).
    """
    if not _PAPER_ID.match(paper):
        raise ValueError(f"paper must look like 'P01', got {paper!r}")
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    _check_record_inputs(seeds, metrics, paper_numbers, wall_seconds)
    summary = {}
    for method, by_metric in metrics.items():
        summary[method] = {}
        for name, values in by_metric.items():
            summary[method][name] = summarize(_check_values(f"{method}/{name}", values, seeds))
        if headline not in summary[method]:
            raise ValueError(f"headline metric {headline!r} missing for method {method!r}")
        values = summary[method][headline]["values"]
        if any(not 0.0 <= v <= 1.0 for v in values):
            raise ValueError(f"{method}/{headline}: the headline metric must be a fraction in [0, 1] "
                             f"(the scoreboard shows it in %), got {values}; divide percentages by 100")
    if comparisons is None and verdict != "no claim tested":
        raise ValueError(f"verdict {verdict!r} needs its comparisons: one kit.experiment.compare result per "
                         "declared claim (only 'no claim tested' goes without)")
    if comparisons is not None:
        check_comparisons(comparisons, verdict, list(seeds), {m: {k: v["values"] for k, v in by.items()}
                                                               for m, by in summary.items()})
    entry = {
        "paper": paper, "profile": profile, "device": device_name(device), "seeds": list(seeds),
        "claim": claim, "paper_numbers": paper_numbers, "metrics": summary, "headline": headline,
        "verdict": verdict, "comparisons": comparisons or [], "notes": notes, "wall_seconds": round(float(wall_seconds), 1),
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": _version("torchvision"), "kit": _version("kit")},
    }
    try:  # standard JSON only: a NaN left anywhere (a nested paper number) is refused, not written
        text = json.dumps(entry, indent=2, sort_keys=False, allow_nan=False)
    except ValueError as error:
        raise ValueError(f"{paper}: the record holds a non-finite number ({error}); records are standard "
                         "JSON, with finite numbers only") from None
    folder = Path(folder) if folder is not None else paths.results_dir() / profile
    path = folder / f"{paper}.json"
    atomic_write_bytes(path, (text + "\n").encode())
    return path


# The fields the scoreboard reads from every record.
REQUIRED_FIELDS = ("paper", "profile", "device", "claim", "paper_numbers", "metrics", "headline",
                   "verdict", "wall_seconds")


def _reject_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name} (records hold finite numbers only)")


def load_one(path: Path) -> dict:
    """One record, checked: standard JSON, an object with the fields the scoreboard reads."""
    path = Path(path)
    try:
        entry = json.loads(path.read_text(), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"results file {path} is not a valid record: {error}; "
                         "re-run its notebook or delete the file") from None
    missing = [k for k in REQUIRED_FIELDS if k not in entry] if isinstance(entry, dict) else list(REQUIRED_FIELDS)
    if missing:
        raise ValueError(f"results file {path} is not a valid record: it lacks {missing}; a record is a "
                         f"JSON object with {list(REQUIRED_FIELDS)} (as kit.results.record writes it)")
    return entry


def rerun_path(paper: str, profile: str, seeds: Sequence[int], threads: int) -> Path:
    """Where the record of a page rerun with other seeds and threads is kept (not on the scoreboard).

    ``results/<profile>/reruns/<paper>-seeds-10-11-12-threads-1.json`` for seeds 10, 11, 12 on one thread.
    """
    if not _PAPER_ID.match(paper):
        raise ValueError(f"paper must look like 'P01', got {paper!r}")
    tag = "-".join(str(int(s)) for s in seeds)
    return paths.results_dir() / profile / "reruns" / f"{paper}-seeds-{tag}-threads-{int(threads)}.json"


def load_rerun(paper: str, profile: str, seeds: Sequence[int], threads: int) -> dict | None:
    """The committed rerun record of a page, or None if nobody ran it (see :func:`rerun_path`)."""
    path = rerun_path(paper, profile, seeds, threads)
    return load_one(path) if path.exists() else None


def load_all(folder: Path | None = None) -> list[dict]:
    """Every record under ``results/`` (all profiles); a bad file is an error that names it."""
    folder = Path(folder) if folder is not None else paths.results_dir()
    return [load_one(p) for p in sorted(folder.glob("*/P*.json"))]


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"
