"""Surrogate search over integer hyper-parameters with a radial-basis-function model.

HPS-Det (Liu et al. 2022, arXiv 2207.11539) finds the number of positives per object with "a
surrogate optimisation algorithm ... iterative steps of updating the surrogate model,
generating and evaluating candidate points" (its Fig. 1). No official code was found; this is
the classic Stochastic-RBF loop of Regis & Shoemaker (2007), which fits that description:

1. evaluate the objective ``f`` (expensive: a short training run and a validation AP) at a few
   initial points;
2. fit an interpolating RBF surrogate ``s(x)`` to every evaluation so far
   (:class:`scipy.interpolate.RBFInterpolator`, cubic kernel plus a linear tail);
3. generate candidate points (every unevaluated integer point of a small box, else random
   perturbations of the best point) and score each by a weighted merit
   ``w * V_s(x) + (1 - w) * V_d(x)``: ``V_s`` is 0 for the best predicted value and 1 for the
   worst, ``V_d`` is 0 for the candidate farthest from every evaluated point and 1 for the
   nearest; the weight ``w`` cycles through (0.3, 0.5, 0.8, 0.95), from exploring to exploiting;
4. evaluate the best-scoring candidate, go to 2 until the budget is spent.

We *maximise* ``f``. Points are integer tuples; evaluations are cached, so a point is never
trained twice.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.interpolate import RBFInterpolator
from scipy.stats import qmc

Point = tuple[int, ...]


class RBFSearch:
    """Maximise ``objective(point) -> float`` over the integer box ``bounds``.

    bounds: one ``(low, high)`` pair of ints per dimension (both inclusive); initial: starting
    points (default: ``num_initial`` points spread over the box, evenly in 1-D, a Latin
    hypercube otherwise); seed: makes the whole search deterministic; kernel: the
    :class:`~scipy.interpolate.RBFInterpolator` kernel; weights: the merit weights ``w`` the
    proposals cycle through; a box of at most ``max_grid_points`` integer points is searched
    point by point, a larger one through ``num_candidates`` random perturbations of the best
    point (plus a quarter as many uniform points).
    """

    def __init__(self, objective: Callable[[Point], float], bounds: Sequence[tuple[int, int]],
                 initial: Sequence[Sequence[int]] | None = None, num_initial: int = 3, seed: int = 0,
                 kernel: str = "cubic", weights: Sequence[float] = (0.3, 0.5, 0.8, 0.95),
                 num_candidates: int = 200, max_grid_points: int = 10_000):
        self.bounds = self._check_bounds(bounds)
        if not weights or any(not 0 <= w <= 1 for w in weights):
            raise ValueError(f"weights must be a non-empty list of numbers in [0, 1], got {list(weights)}")
        self.objective, self.kernel, self.weights = objective, kernel, tuple(weights)
        self.num_candidates, self.max_grid_points = num_candidates, max_grid_points
        self.rng = np.random.default_rng(seed)
        self.cache: dict[Point, float] = {}
        self.history: list[dict] = []
        points = [self._check_point(p) for p in initial] if initial is not None else self._initial_design(num_initial)
        self.initial = list(dict.fromkeys(points))  # distinct, in order
        if len(self.initial) < 2:
            raise ValueError(f"need at least 2 distinct initial points to fit a surrogate, got {self.initial}")

    # ------------------------------------------------------------------ checks and design
    @staticmethod
    def _check_bounds(bounds) -> list[tuple[int, int]]:
        checked = []
        for pair in bounds:
            if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) for v in pair) or pair[0] > pair[1]:
                raise ValueError(f"bounds must be (low, high) integer pairs with low <= high, got {list(bounds)}")
            checked.append((int(pair[0]), int(pair[1])))
        if not checked:
            raise ValueError("bounds must name at least one dimension")
        return checked

    def _check_point(self, point) -> Point:
        point = tuple(point)
        if len(point) != len(self.bounds) or not all(isinstance(v, (int, np.integer)) for v in point):
            raise ValueError(f"a point must be {len(self.bounds)} integers, got {point!r}")
        if any(not low <= v <= high for v, (low, high) in zip(point, self.bounds)):
            raise ValueError(f"point {point} lies outside the bounds {self.bounds}")
        return tuple(int(v) for v in point)

    def _initial_design(self, count: int) -> list[Point]:
        if count < 2:
            raise ValueError(f"num_initial must be >= 2, got {count}")
        low = np.array([b[0] for b in self.bounds], dtype=float)
        high = np.array([b[1] for b in self.bounds], dtype=float)
        if len(self.bounds) == 1:
            unit = np.linspace(0, 1, count)[:, None]  # both ends and evenly between
        else:
            unit = qmc.LatinHypercube(d=len(self.bounds), seed=self.rng).random(count)  # seed=: SciPy >= 1.11
        return [tuple(int(v) for v in row) for row in np.rint(low + unit * (high - low))]

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, point, kind: str = "manual") -> float:
        """``objective(point)``, from the cache when the point was evaluated before."""
        point = self._check_point(point)
        if point in self.cache:
            return self.cache[point]
        value = float(self.objective(point))
        if not math.isfinite(value):
            raise ValueError(f"the objective returned {value} at {point}; it must be finite")
        self.cache[point] = value
        best = max(self.cache.values())
        self.history.append({"evaluation": len(self.cache), "point": point, "value": value,
                             "best_so_far": best, "kind": kind})
        return value

    @property
    def best(self) -> tuple[Point, float]:
        """The best evaluated point and its value."""
        if not self.cache:
            raise ValueError("nothing evaluated yet")
        point = max(self.cache, key=lambda p: (self.cache[p], [-v for v in p]))  # ties: the smaller point
        return point, self.cache[point]

    # ------------------------------------------------------------------ surrogate and candidates
    def surrogate(self) -> RBFInterpolator:
        """The RBF model through every evaluation so far (interpolates them exactly)."""
        if len(self.cache) < 2:
            raise ValueError("the surrogate needs at least 2 evaluations")
        points = np.array(list(self.cache), dtype=float)  # (E, D)
        values = np.array(list(self.cache.values()))  # (E,)
        return RBFInterpolator(points, values, kernel=self.kernel, degree=1)

    def predict(self, points) -> np.ndarray:
        """Surrogate predictions at ``points`` (P, D) (any real coordinates, e.g. for a plot)."""
        return self.surrogate()(np.asarray(points, dtype=float).reshape(-1, len(self.bounds)))

    def candidates(self) -> np.ndarray:
        """Unevaluated integer candidates (P, D)."""
        sizes = [high - low + 1 for low, high in self.bounds]
        if math.prod(sizes) <= self.max_grid_points:  # small box: every point
            grids = np.meshgrid(*[np.arange(low, high + 1) for low, high in self.bounds], indexing="ij")
            points = np.stack([g.ravel() for g in grids], axis=1)
        else:  # DYCORS-style: normal perturbations of the best point (sd a fifth of the range), plus uniform points
            low = np.array([b[0] for b in self.bounds])
            high = np.array([b[1] for b in self.bounds])
            best = np.array(self.best[0], dtype=float)
            step = 0.2 * (high - low)
            near = best + self.rng.normal(size=(self.num_candidates, len(best))) * step
            far = self.rng.uniform(low, high + 1, size=(self.num_candidates // 4, len(best)))
            points = np.unique(np.clip(np.rint(np.concatenate([near, far])), low, high).astype(int), axis=0)
        seen = set(self.cache)
        return np.array([p for p in points if tuple(int(v) for v in p) not in seen], dtype=int)

    def merit(self, candidates: np.ndarray, weight: float) -> np.ndarray:
        """Regis & Shoemaker's weighted score of each candidate (lower is better)."""
        predicted = self.predict(candidates)  # (P,)
        evaluated = np.array(list(self.cache), dtype=float)  # (E, D)
        distance = np.linalg.norm(candidates[:, None, :] - evaluated[None], axis=-1).min(1)  # (P,)
        scale = lambda v: (v.max() - v) / (v.max() - v.min()) if v.max() > v.min() else np.zeros_like(v)
        value_score = scale(predicted)  # 0 = the highest predicted value (we maximise)
        distance_score = scale(distance)  # 0 = the farthest from every evaluated point
        return weight * value_score + (1 - weight) * distance_score

    def propose(self) -> Point | None:
        """The next point to evaluate (None when every point of the box is evaluated)."""
        candidates = self.candidates()
        if len(candidates) == 0:
            return None
        weight = self.weights[(len(self.cache) - len(self.initial)) % len(self.weights)]
        return tuple(int(v) for v in candidates[int(np.argmin(self.merit(candidates, weight)))])

    def run(self, budget: int) -> pd.DataFrame:
        """Evaluate the initial points, then surrogate proposals, up to ``budget`` evaluations.

        Returns the history: one row per evaluation (point, value, best so far, kind).
        """
        if budget < len(self.initial):
            raise ValueError(f"budget {budget} is smaller than the {len(self.initial)} initial points")
        for point in self.initial:
            self.evaluate(point, kind="initial")
        while len(self.cache) < budget:
            point = self.propose()
            if point is None:
                break
            self.evaluate(point, kind="surrogate")
        return pd.DataFrame(self.history)
