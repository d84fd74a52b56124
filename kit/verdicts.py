"""The kit's one verdict rule: claims declared before the run, paired seeds, a t interval.

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

The grid of methods x seeds that produces the per-seed values, and the tables a page shows,
are :mod:`kit.experiment`'s (which also offers every name here).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

DIRECTIONS = ("higher", "lower", "similar")
COMPARISON_VERDICTS = ("reproduced", "not reproduced", "no difference at this scale", "inconclusive",
                       "not tested at this scale", "baseline did not train")
PAPER_VERDICTS = COMPARISON_VERDICTS + ("partly reproduced",)
CONFIDENCE = 0.95


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
