"""The grid of methods x seeds a notebook's experiment runs, and how a page shows its verdicts.

A notebook states *what* it compares; this module does the running and the formatting, the
same way on every page: :func:`run_grid` runs every (arm, seed) pair into a :class:`Grid`,
:func:`declared` and :func:`verdict_table` show the claims before and after the run,
:func:`rerun_report` sets a page beside a rerun with other seeds, and :func:`evaluate_at`
evaluates during training. The verdict rule itself is :mod:`kit.verdicts`; its names
(:class:`Claim`, :class:`EngagementCheck`, :func:`compare`, :func:`paper_verdict`,
:func:`aa_noise`, ...) are offered here too, so a page imports one module.

``KIT_SEEDS=10,11,12`` replaces a profile's seeds (:func:`seeds`), so a reader can check a
page with seeds its author never saw.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import pandas as pd

from kit.verdicts import (COMPARISON_VERDICTS, CONFIDENCE, DIRECTIONS, PAPER_VERDICTS, Claim, EngagementCheck,
                          aa_noise, compare, paper_verdict, rule, signed_differences, t_interval, verdict_of)

__all__ = ["COMPARISON_VERDICTS", "CONFIDENCE", "DIRECTIONS", "PAPER_VERDICTS", "Claim", "EngagementCheck",
           "aa_noise", "compare", "paper_verdict", "rule", "signed_differences", "t_interval", "verdict_of",
           "seeds", "mean_std", "difference_text", "config_key", "Grid", "run_grid", "declared", "verdict_table",
           "HOLDS_WITHOUT_MATCHING", "rerun_report", "evaluation_steps", "evaluate_at", "curve_of"]


# ----------------------------------------------------------------------------- seeds

def seeds(profile_seeds: Sequence[int], env: Mapping[str, str] | None = None) -> list[int]:
    """The seeds to run: ``KIT_SEEDS`` (comma-separated non-negative ints) if set, else the profile's.

    >>> seeds([0, 1, 2], env={"KIT_SEEDS": "10, 11,12"})
    [10, 11, 12]
    """
    env = os.environ if env is None else env
    text = env.get("KIT_SEEDS", "").strip()
    if not text:
        return _check_seeds(list(profile_seeds), "the profile's seeds")
    try:
        parsed = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"KIT_SEEDS={text!r}: expected comma-separated non-negative integers, "
                         f"e.g. KIT_SEEDS=10,11,12") from None
    return _check_seeds(parsed, f"KIT_SEEDS={text!r}")


def _check_seeds(values: list, where: str) -> list[int]:
    if not values:
        raise ValueError(f"{where}: at least one seed is needed")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
        raise ValueError(f"{where}: seeds must be non-negative integers, got {values}")
    if len(set(values)) != len(values):
        raise ValueError(f"{where}: seeds must be distinct (a repeated seed is not a new sample), got {values}")
    return list(values)


# ----------------------------------------------------------------------------- formatting

def mean_std(values: Iterable[float], scale: float = 1.0, digits: int = 1) -> str:
    """``"31.7 ± 0.2 (n=3)"``: mean ± sample std over seeds, the one formatter of the kit."""
    values = [float(v) * scale for v in values]
    if not values:
        return "—"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f} (n=1)"
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.{digits}f} ± {sd:.{digits}f} (n={len(values)})"


def difference_text(comparison: Mapping, scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
    """``"+1.2 [-0.3, +2.7]"``: the mean paired difference (paper's side positive) and its interval."""
    mean = comparison["difference_mean"] * scale
    interval = comparison["interval_95"]
    if interval is None:
        return f"{mean:+.{digits}f}{unit} (no interval: one seed)"
    low, high = (v * scale for v in interval)
    return f"{mean:+.{digits}f}{unit} [{low:+.{digits}f}, {high:+.{digits}f}]"


# ----------------------------------------------------------------------------- the grid

def config_key(config: Mapping) -> str:
    """A short stable hash of a JSON-serialisable run configuration (checkpoint names, run keys)."""
    text = json.dumps(config, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class Grid:
    """Per-seed metrics of every (arm, seed) of an experiment, as a tidy table.

    ``run_grid`` fills it; ``table`` has one row per (arm, seed) and one column per metric;
    ``extras`` keeps whatever each run returned besides its metrics (models, histories).
    """

    arms: list[str]
    seeds: list[int]
    table: pd.DataFrame
    extras: dict = field(default_factory=dict)

    def values(self, arm: str, metric: str) -> dict[int, float]:
        """seed -> value of ``metric`` for ``arm``."""
        rows = self.table[self.table["arm"] == arm]
        if rows.empty:
            raise KeyError(f"no arm {arm!r}; arms are {self.arms}")
        if metric not in rows:
            raise KeyError(f"no metric {metric!r}; metrics are {self.metrics}")
        return {int(s): float(v) for s, v in zip(rows["seed"], rows[metric])}

    @property
    def metrics(self) -> list[str]:
        return [c for c in self.table.columns if c not in ("arm", "seed")]

    def mean(self, arm: str, metric: str) -> float:
        """The mean over seeds of one arm's metric."""
        values = list(self.values(arm, metric).values())
        return sum(values) / len(values)

    def std(self, arm: str, metric: str) -> float:
        """The sample standard deviation over seeds (0 for one seed)."""
        values = list(self.values(arm, metric).values())
        if len(values) < 2:
            return 0.0
        mean = sum(values) / len(values)
        return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))

    def mean_std(self, arm: str, metric: str, scale: float = 1.0, digits: int = 1) -> str:
        """``"31.7 ± 0.2 (n=3)"`` for one arm and metric (:func:`mean_std`)."""
        return mean_std(self.values(arm, metric).values(), scale, digits)

    def summary(self, metrics: Sequence[str] | None = None, scale: Mapping[str, float] | float = 1.0,
                digits: int = 1) -> pd.DataFrame:
        """mean ± std (n) per arm and metric (``scale``: one factor, or one per metric, e.g. 100 for %)."""
        metrics = list(metrics or self.metrics)
        factor = (lambda m: scale.get(m, 1.0)) if isinstance(scale, Mapping) else (lambda m: scale)
        return pd.DataFrame({arm: {m: mean_std(self.values(arm, m).values(), factor(m), digits) for m in metrics}
                             for arm in self.arms}).T

    def compare(self, claim: Claim, engaged: EngagementCheck | None = None) -> dict:
        floor = self.values(claim.baseline, claim.floored_metric) if claim.floor_metric else None
        return compare(claim, self.values(claim.baseline, claim.metric), self.values(claim.method, claim.metric),
                       engaged, floor)

    def per_arm(self, metrics: Sequence[str] | None = None) -> dict:
        """arm -> metric -> per-seed list, in seed order (what :func:`kit.results.record` takes)."""
        metrics = list(metrics or self.metrics)
        return {arm: {m: [self.values(arm, m)[s] for s in self.seeds] for m in metrics} for arm in self.arms}


def run_grid(arms: Sequence[str], seeds: Sequence[int], run: Callable[[str, int], Mapping],
             metrics_key: str = "metrics") -> Grid:
    """Run ``run(arm, seed)`` for every seed and arm (seed-major, so pairs finish together).

    ``run`` returns either a dict of metrics or a dict with the metrics under ``metrics_key`` and
    anything else beside them (kept in ``Grid.extras[arm, seed]``). Every run must report the same
    metrics, as finite numbers.
    """
    arms, seeds = list(arms), _check_seeds(list(seeds), "run_grid seeds")
    if not arms or len(set(arms)) != len(arms):
        raise ValueError(f"arms must be distinct names, got {arms}")
    rows, extras, names = [], {}, None
    for seed in seeds:
        for arm in arms:
            out = dict(run(arm, seed))
            if metrics_key in out:
                metrics, extra = dict(out.pop(metrics_key)), out
            else:
                metrics, extra = out, {}
            bad = {k: v for k, v in metrics.items()
                   if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v))}
            if bad:
                raise ValueError(f"run({arm!r}, {seed}) returned metrics that are not finite numbers: {bad}")
            if names is None:
                names = sorted(metrics)
            elif sorted(metrics) != names:
                raise ValueError(f"run({arm!r}, {seed}) reported metrics {sorted(metrics)}, the first run {names}")
            rows.append({"arm": arm, "seed": seed, **{k: float(v) for k, v in metrics.items()}})
            extras[arm, seed] = extra
    return Grid(arms, seeds, pd.DataFrame(rows), extras)


def declared(claims: Sequence[Claim], checks: Mapping[str, tuple[str, float]] | None = None) -> pd.DataFrame:
    """The declared claims as a table, for the page to show before the experiment runs.

    checks: claim name -> (what the engagement check measures, its threshold), shown beside the claim.
    """
    table = pd.DataFrame([asdict(c) for c in claims]).set_index("name")
    if checks:
        unknown = sorted(set(checks) - set(table.index))
        if unknown:
            raise ValueError(f"engagement checks for undeclared claims {unknown}; claims are {list(table.index)}")
        table["mechanism check"] = [f"{checks[n][0]} >= {checks[n][1]:g}" if n in checks else "—" for n in table.index]
    return table


def verdict_table(comparisons: Sequence[Mapping], scale: float = 1.0, digits: int = 1, unit: str = "") -> pd.DataFrame:
    """The comparisons as the page shows them: difference [95 % interval], margin, check, verdict."""
    rows = []
    for c in comparisons:
        engaged = c.get("engaged")
        check = "—" if engaged is None else (f"{engaged['value']:.3g} vs >= {engaged['threshold']:.3g} "
                                             f"({'passed' if engaged['passed'] else 'FAILED'})")
        rows.append({"claim": c["claim"], "method − baseline (paper's side +)": difference_text(c, scale, digits, unit),
                     "margin": f"±{c['margin'] * scale:.{digits}f}{unit}", "seeds": c["n_seeds"],
                     "mechanism check": check, "verdict": c["verdict"]})
    return pd.DataFrame(rows).set_index("claim")


HOLDS_WITHOUT_MATCHING = ("inconclusive", "no difference at this scale")


def rerun_report(page: Sequence[Mapping], page_verdict: str, rerun: Mapping | None, scale: float = 1.0,
                 digits: int = 1, unit: str = "") -> str:
    """Markdown: a page's claims beside a rerun of the same page with other seeds / threads.

    ``page``: this run's comparisons; ``rerun``: the rerun's record (:func:`kit.results.load_rerun`),
    or None when there is none. A claim *holds* when both runs give it the same verdict; a claim
    this page calls ``inconclusive`` or ``no difference at this scale`` makes no claim a rerun could
    contradict, so a different verdict there is reported, not counted against the page.
    """
    if rerun is None:
        return ("No rerun with other seeds and threads is recorded for this page yet (the rerun exercise "
                "below says how to make one).")
    by_claim = {c["claim"]: c for c in rerun["comparisons"]}
    missing = [c["claim"] for c in page if c["claim"] not in by_claim]
    if missing:
        return (f"The recorded rerun (seeds {rerun['seeds']}, {rerun['machine']['threads']} thread(s)) does not "
                f"have this page's claims {missing}: it is from older code; rerun it.")
    lines = [f"Rerun with seeds {rerun['seeds']} on {rerun['machine']['threads']} thread(s), recorded "
             f"{rerun['recorded_at'][:10]} on {rerun['machine']['cpu']}:", "",
             "| claim | this page | rerun | holds? |", "| --- | --- | --- | --- |"]
    differ, allowed = [], []
    for c in page:
        other = by_claim[c["claim"]]
        same = other["verdict"] == c["verdict"]
        if not same:
            (allowed if c["verdict"] in HOLDS_WITHOUT_MATCHING else differ).append(c["claim"])
        word = "yes" if same else ("moved (this page makes no claim here)" if c["claim"] in allowed else "**no**")
        lines.append(f"| {c['claim']} | {difference_text(c, scale, digits, unit)} → {c['verdict']} | "
                     f"{difference_text(other, scale, digits, unit)} → {other['verdict']} | {word} |")
    lines.append("")
    lines.append(f"Paper verdict: this page **{page_verdict}**, the rerun **{rerun['verdict']}**. ")
    if differ:
        lines[-1] += (f"**The rerun contradicts this page on {len(differ)} claim(s)**: "
                      + "; ".join(differ) + ". Treat this page's verdict on them as not settled.")
    elif allowed:
        lines[-1] += ("Every claim this page decides holds; the claims it leaves open ("
                      + "; ".join(allowed) + ") moved, as an open interval may.")
    else:
        lines[-1] += "Every claim holds."
    return "\n".join(lines)


# ----------------------------------------------------------------------------- evaluation during training

def evaluation_steps(iterations: int, points: int = 4) -> list[int]:
    """``points`` evenly spaced steps ending at the last one, e.g. (800, 4) -> [199, 399, 599, 799]."""
    if iterations < 1 or points < 1:
        raise ValueError(f"iterations and points must be >= 1, got {iterations}, {points}")
    points = min(points, iterations)
    return sorted({round(iterations * (i + 1) / points) - 1 for i in range(points)})


def evaluate_at(model, steps: Iterable[int], evaluate: Callable[[object], Mapping[str, float]],
                prefix: str = "eval/") -> Callable[[int, dict], None]:
    """An ``on_step`` for :func:`kit.train.train` that evaluates the model at the given steps.

    The numbers go into that step's history row (as ``prefix + name``), so they are saved in the
    checkpoint with the rest of the history and come back when an interrupted run is resumed.
    ``evaluate(model)`` runs in eval mode without gradients (:func:`kit.runtime.evaluating`);
    the training mode is restored after.
    """
    from kit.runtime import evaluating  # here: importing kit.experiment does not load torch

    wanted = set(int(s) for s in steps)

    def on_step(step: int, row: dict) -> None:
        if step in wanted:
            with evaluating(model):
                numbers = dict(evaluate(model))
            row.update({prefix + name: float(value) for name, value in numbers.items()})

    return on_step


def curve_of(history: pd.DataFrame, column: str) -> pd.Series:
    """The evaluated points of one history column (step -> value), NaN rows dropped."""
    if column not in history:
        raise KeyError(f"the history has no column {column!r}; it has {list(history.columns)}")
    rows = history[["step", column]].dropna()
    return pd.Series(rows[column].to_numpy(), index=rows["step"].to_numpy() + 1, name=column)
