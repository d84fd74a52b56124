"""Figures of the kit's verdicts: paired seeds per claim, and a metric over training.

Both draw only what :mod:`kit.experiment` measured and :mod:`kit.verdicts` decided: the per-seed values a comparison holds,
and the evaluated points of training histories (``kit.experiment.evaluate_at``).
"""
from __future__ import annotations

import textwrap
from typing import Mapping, Sequence

import matplotlib.pyplot as plt

import numpy as np
import pandas as pd

from kit.experiment import curve_of
from kit.verdicts import signed_differences


def _wrapped(name: str, width: int = 8) -> str:
    """An arm name broken over lines of about ``width`` characters (a word longer than that stays whole)."""
    return "\n".join(textwrap.wrap(str(name), width, break_long_words=False)) or str(name)


def _label_arms(ax, baseline: str, method: str, width: int = 8, fontsize: float = 9) -> None:
    """The two arms' names under x = 0 and 1; when their widest lines together would not fit side by
    side, the method's name is dropped below the baseline's, so the two never overlap.

    Drawn as annotations (gid ``arm-label``) rather than tick labels, whose positions matplotlib resets.
    """
    left, right = _wrapped(baseline, width), _wrapped(method, width)
    ax.set_xticks([0, 1], ["", ""])
    widest = [max(len(line) for line in label.splitlines()) for label in (left, right)]
    drop = 1.4 * fontsize * (left.count("\n") + 1) if sum(widest) > 2 * width else 0.0
    for x, text, below in ((0, left, 0.0), (1, right, drop)):
        ax.annotate(text, xy=(x, 0), xycoords=("data", "axes fraction"), xytext=(0, -5 - below),
                    textcoords="offset points", ha="center", va="top", fontsize=fontsize, gid="arm-label")


def paired_seeds(comparisons: Sequence[Mapping], scale: float = 1.0, unit: str = "", size=(2.9, 2.6)):
    """One panel per comparison: each seed's baseline -> method line, and the interval beside it.

    Left of a panel, the metric per seed (a line joins the two arms of one seed). Right, the
    paired difference (paper's side positive) with its 95 % interval and the ±margin band:
    the verdict is where that interval lies.
    """
    if not comparisons:
        raise ValueError("paired_seeds needs at least one comparison")
    fig, axes = plt.subplots(1, len(comparisons), figsize=(size[0] * len(comparisons), size[1]), squeeze=False)
    for ax, c in zip(axes[0], comparisons):
        base = np.asarray(c["baseline_values"]) * scale
        meth = np.asarray(c["method_values"]) * scale
        for b, m in zip(base, meth):
            ax.plot([0, 1], [b, m], color="tab:gray", lw=1, marker="o", ms=3)
        _label_arms(ax, c["baseline"], c["method"])
        ax.set_xlim(-0.4, 2.2)
        ax.set_ylabel(f"{c['metric']}{f' ({unit})' if unit else ''}", fontsize=9)
        twin = ax.twinx()
        diffs = np.asarray(signed_differences(c["direction"], base, meth))
        twin.axhspan(-c["margin"] * scale, c["margin"] * scale, color="tab:green", alpha=0.12, lw=0)
        twin.axhline(0, color="black", lw=0.8)
        twin.scatter(np.full(len(diffs), 1.7), diffs, s=10, color="tab:blue", zorder=3)
        if c["interval_95"] is not None:
            low, high = (v * scale for v in c["interval_95"])
            twin.errorbar([1.9], [c["difference_mean"] * scale], yerr=[[c["difference_mean"] * scale - low],
                                                                     [high - c["difference_mean"] * scale]],
                          fmt="D", color="tab:blue", ms=4, capsize=3)
        span = max(abs(diffs).max(), c["margin"] * scale, *(abs(v * scale) for v in (c["interval_95"] or [0])))
        twin.set_ylim(-1.15 * span - 1e-9, 1.15 * span + 1e-9)
        twin.set_ylabel("method − baseline (blue)" if c["direction"] == "similar"
                        else "difference, paper's side + (blue)", fontsize=9, color="tab:blue")
        twin.tick_params(labelsize=9)
        ax.tick_params(labelsize=9)
        ax.set_title(f"{textwrap.fill(c['claim'], 32)}\n→ {c['verdict']}", fontsize=9)
    fig.tight_layout()
    return fig


def over_training(histories: Mapping[str, Sequence[pd.DataFrame]], column: str, scale: float = 1.0,
                  ylabel: str | None = None, size=(4.4, 3.0), ax=None):
    """Mean ± std band over seeds of an evaluated column against the iteration, one line per arm.

    histories: arm -> one training history per seed (evaluated points in ``column``).
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=size)
    else:
        fig = ax.figure
    for arm, runs in histories.items():
        curves = pd.concat([curve_of(h, column) for h in runs], axis=1) * scale  # (points, seeds)
        mean, std = curves.mean(axis=1), curves.std(axis=1).fillna(0.0)
        line, = ax.plot(mean.index, mean.to_numpy(), marker="o", ms=3, label=f"{arm} (n={curves.shape[1]})")
        ax.fill_between(mean.index, (mean - std).to_numpy(), (mean + std).to_numpy(), color=line.get_color(),
                        alpha=0.2, lw=0)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel or column)
    ax.set_title(f"{ylabel or column} over training (mean ± std over seeds)", fontsize=9)
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig
