"""The kit's one verdict rule, and the grid of methods x seeds a notebook's experiment runs.

A notebook states *what* it compares; this module does the running and the statistics, the
same way on every page.

**Before the run** the notebook declares its claims (:class:`Claim`): the metric, the
direction the paper claims (``higher`` or ``lower`` is better for the method, or ``similar``:
the method matches the baseline, for a paper's "negligible", "on par", "maintains"), the
practical margin ``delta`` (at least the noise a baseline-vs-baseline run shows), and optionally
a floor the baseline must reach to count as trained (in the claim's metric or another one). It
also declares how to tell that the mechanism engaged (:class:`EngagementCheck`: a measured
value and the threshold it must pass).

**The rule.** Over the paired seeds (baseline and method share seed ``s``: the same data order
and, where the architectures allow, the same initial weights) take the differences
``d_s = method_s - baseline_s``, signed so that positive is the paper's side (unsigned for
``similar``). With their mean ``m``, sample standard deviation ``sd`` and ``n`` seeds, the 95 %
Student-t interval is ``m +- t_{0.975, n-1} * sd / sqrt(n)``. Then, in this order:

=============================== ========================================================
``not tested at this scale``    the declared mechanism check failed (value recorded)
``baseline did not train``      the baseline's mean is below the declared floor
``inconclusive``                fewer than 2 seeds: no interval
``no difference at this scale`` the interval lies inside ``[-delta, +delta]``
``reproduced``                  the interval lies entirely above 0
``not reproduced``              the interval lies entirely below 0
``inconclusive``                otherwise
=============================== ========================================================

An interval inside ``+-delta`` is "no difference" even when it excludes 0: ``delta`` is declared
as the smallest difference that matters at this scale (no smaller than the A/A noise), so a
shift smaller than that is not the paper's effect, whatever its sign.

A ``similar`` claim (the paper says the method costs nothing, or changes nothing) is an
equivalence test on the same interval: ``reproduced`` when it lies inside ``[-delta, +delta]``,
``not reproduced`` when it lies entirely outside (beyond ``+delta`` or below ``-delta``),
``inconclusive`` otherwise.

A paper's verdict (:func:`paper_verdict`) is its claims' common verdict when they agree;
otherwise ``partly reproduced`` if at least one claim is reproduced, ``not reproduced`` if none
is and at least one is not, and ``inconclusive`` for any other mix. No notebook computes a
verdict by its own code; :func:`kit.results.record` re-derives every verdict with this rule and
refuses a record that disagrees.

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

DIRECTIONS = ("higher", "lower", "similar")
COMPARISON_VERDICTS = ("reproduced", "not reproduced", "no difference at this scale", "inconclusive",
                       "not tested at this scale", "baseline did not train")
PAPER_VERDICTS = COMPARISON_VERDICTS + ("partly reproduced",)
CONFIDENCE = 0.95


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


# ----------------------------------------------------------------------------- declarations

@dataclass(frozen=True)
class Claim:
    """One claim of the paper, declared before the experiment runs.

    baseline / method: the arm names in the results table; metric: the column compared;
    direction: ``higher`` or ``lower`` is the paper's side for the method, ``similar`` that the
    method matches the baseline (an equivalence claim; needs a margin > 0); margin: the
    practical margin delta in the metric's own units (e.g. 0.01 = 1 AP point for AP stored as a
    fraction); baseline_floor: the baseline's mean of ``floor_metric`` (default: ``metric``) must
    reach this (at least it, or at most it for ``lower``) or the comparison is void ("baseline
    did not train"); None = no floor.
    """

    name: str
    baseline: str
    method: str
    metric: str
    direction: str = "higher"
    margin: float = 0.0
    baseline_floor: float | None = None
    floor_metric: str | None = None

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"claim {self.name!r}: direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if not (isinstance(self.margin, (int, float)) and math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"claim {self.name!r}: margin must be a finite number >= 0, got {self.margin!r}")
        if self.baseline == self.method:
            raise ValueError(f"claim {self.name!r}: baseline and method are the same arm {self.method!r}")
        if self.direction == "similar" and self.margin <= 0:
            raise ValueError(f"claim {self.name!r}: a 'similar' claim needs a margin > 0 (how far apart still "
                             f"counts as the same), got {self.margin!r}")
        if self.baseline_floor is not None and not math.isfinite(self.baseline_floor):
            raise ValueError(f"claim {self.name!r}: baseline_floor must be finite or None")
        if self.floor_metric is not None and self.baseline_floor is None:
            raise ValueError(f"claim {self.name!r}: floor_metric {self.floor_metric!r} given without a baseline_floor")

    @property
    def floored_metric(self) -> str:
        """The metric the baseline floor is read in."""
        return self.floor_metric or self.metric


@dataclass(frozen=True)
class EngagementCheck:
    """Did the mechanism actually do something? ``value`` (measured) must be ``>= threshold``.

    description says what was measured, e.g. "mean |offset| of the DCN layers (px)".
    """

    description: str
    value: float
    threshold: float

    @property
    def passed(self) -> bool:
        return math.isfinite(self.value) and self.value >= self.threshold

    def as_dict(self) -> dict:
        return {"description": self.description, "value": float(self.value),
                "threshold": float(self.threshold), "passed": self.passed}


# ----------------------------------------------------------------------------- statistics

def t_interval(differences: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Student-t interval of the mean of ``differences`` (None for fewer than 2 values)."""
    from scipy import stats

    values = [float(v) for v in differences]
    if any(not math.isfinite(v) for v in values):
        raise ValueError(f"differences must be finite, got {values}")
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return (mean - half, mean + half)


def rule(interval: tuple[float, float] | None, margin: float, engaged: bool | None = True,
         baseline_trained: bool = True, direction: str = "higher") -> str:
    """The kit's verdict for one comparison (see the module docstring for the order).

    ``interval`` is on the paper's side (signed differences) for ``higher``/``lower`` and of the
    plain differences for ``similar``.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if engaged is False:
        return "not tested at this scale"
    if not baseline_trained:
        return "baseline did not train"
    if interval is None:
        return "inconclusive"
    low, high = interval
    inside = -margin <= low and high <= margin
    if direction == "similar":
        if inside:
            return "reproduced"
        if low > margin or high < -margin:
            return "not reproduced"
        return "inconclusive"
    if inside:
        return "no difference at this scale"
    if low > 0:
        return "reproduced"
    if high < 0:
        return "not reproduced"
    return "inconclusive"


def _trained(floor: float | None, values: Sequence[float], direction: str) -> bool:
    if floor is None:
        return True
    mean = sum(float(v) for v in values) / len(values)
    return mean <= floor if direction == "lower" else mean >= floor


def signed_differences(direction: str, baseline: Sequence[float], method: Sequence[float]) -> list[float]:
    """method - baseline per seed, signed so that positive is the paper's side (plain for ``similar``)."""
    sign = -1.0 if direction == "lower" else 1.0
    return [sign * (float(m) - float(b)) for b, m in zip(baseline, method)]


def compare(claim: Claim, baseline: Mapping[int, float], method: Mapping[int, float],
            engaged: EngagementCheck | None = None, floor_values: Mapping[int, float] | None = None) -> dict:
    """Apply the rule to one claim: per-seed values by seed -> a comparison record.

    Every seed must pair both arms. ``floor_values``: the baseline's per-seed values of the
    claim's ``floor_metric`` (needed when it differs from ``metric``).
    """
    if set(baseline) != set(method):
        raise ValueError(f"claim {claim.name!r}: baseline seeds {sorted(baseline)} and method seeds "
                         f"{sorted(method)} differ; every seed must pair both arms")
    order = sorted(baseline)
    if claim.floored_metric != claim.metric:
        if floor_values is None or set(floor_values) != set(order):
            raise ValueError(f"claim {claim.name!r}: its floor is in {claim.floor_metric!r}; pass the baseline's "
                             f"per-seed values of it for seeds {order} as floor_values")
        floor_list = [float(floor_values[s]) for s in order]
    else:
        floor_list = [float(baseline[s]) for s in order]
    differences = signed_differences(claim.direction, [baseline[s] for s in order], [method[s] for s in order])
    interval = t_interval(differences)
    trained = _trained(claim.baseline_floor, floor_list, claim.direction)
    verdict = rule(interval, claim.margin, None if engaged is None else engaged.passed, trained, claim.direction)
    return {
        "claim": claim.name, "baseline": claim.baseline, "method": claim.method, "metric": claim.metric,
        "direction": claim.direction, "margin": float(claim.margin), "seeds": order, "n_seeds": len(order),
        "baseline_values": [float(baseline[s]) for s in order], "method_values": [float(method[s]) for s in order],
        "baseline_floor": claim.baseline_floor, "floor_metric": claim.floored_metric, "floor_values": floor_list,
        "difference_mean": sum(differences) / len(differences),
        "interval_95": list(interval) if interval is not None else None,
        "engaged": engaged.as_dict() if engaged is not None else None,
        "verdict": verdict,
    }


def verdict_of(comparison: Mapping) -> str:
    """Re-derive a recorded comparison's verdict from its own fields (what results.record checks)."""
    engaged = comparison.get("engaged")
    floor_values = comparison.get("floor_values", comparison["baseline_values"])
    trained = _trained(comparison.get("baseline_floor"), floor_values, comparison["direction"])
    interval = comparison.get("interval_95")
    return rule(tuple(interval) if interval is not None else None, comparison["margin"],
                None if engaged is None else bool(engaged["passed"]), trained, comparison["direction"])


def paper_verdict(comparisons: Sequence[Mapping]) -> str:
    """The claims' common verdict; if they differ: ``partly reproduced`` when one is reproduced,
    ``not reproduced`` when none is and one is not, ``inconclusive`` otherwise."""
    if not comparisons:
        raise ValueError("a paper verdict needs at least one declared comparison")
    verdicts = {c["verdict"] for c in comparisons}
    if len(verdicts) == 1:
        return verdicts.pop()
    if "reproduced" in verdicts:
        return "partly reproduced"
    if "not reproduced" in verdicts:
        return "not reproduced"
    return "inconclusive"


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
        return ("No rerun with other seeds and threads is recorded for this page yet (exercise 1 asks you "
                "to make one).")
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


def aa_noise(values: Mapping[int, float]) -> float:
    """The noise of a difference between two runs of the *same* arm (an A/A comparison).

    ``values``: one arm's metric per seed. Two independent runs differ by ``sqrt(2) * sd`` on
    average (root mean square); a margin below that cannot be told from seed noise.
    """
    numbers = [float(v) for v in values.values()]
    if len(numbers) < 2:
        raise ValueError(f"the A/A noise needs at least 2 seeds, got {len(numbers)}")
    mean = sum(numbers) / len(numbers)
    sd = math.sqrt(sum((v - mean) ** 2 for v in numbers) / (len(numbers) - 1))
    return math.sqrt(2.0) * sd


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
    checkpoint with the rest of the history and come back when a finished run is resumed.
    ``evaluate(model)`` runs in eval mode without gradients; training mode is restored after.
    """
    import torch

    wanted = set(int(s) for s in steps)

    def on_step(step: int, row: dict) -> None:
        if step not in wanted:
            return
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                numbers = dict(evaluate(model))
        finally:
            model.train(was_training)
        for name, value in numbers.items():
            row[prefix + name] = float(value)

    return on_step


def curve_of(history: pd.DataFrame, column: str) -> pd.Series:
    """The evaluated points of one history column (step -> value), NaN rows dropped."""
    if column not in history:
        raise KeyError(f"the history has no column {column!r}; it has {list(history.columns)}")
    rows = history[["step", column]].dropna()
    return pd.Series(rows[column].to_numpy(), index=rows["step"].to_numpy() + 1, name=column)
