"""Training curves from :func:`kit.train.train` histories."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd


def training_curves(histories: dict, keys=("loss",), smooth: int = 20, size=(4.2, 3.0), vlines: dict | None = None):
    """One panel per key; one line per run (name -> DataFrame), smoothed by a rolling mean.

    ``vlines`` marks steps (label -> step), e.g. the end of a warm-up.
    """
    keys = list(keys)
    fig, axes = plt.subplots(1, len(keys), figsize=(size[0] * len(keys), size[1]), squeeze=False)
    # Ten colours, then the same colours dashed, then dotted: no two of up to 30 lines look alike.
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":"]
    for ax, key in zip(axes[0], keys):
        for index, (name, history) in enumerate(histories.items()):
            if key not in history:
                continue
            series = pd.Series(history[key].to_numpy(), index=history["step"].to_numpy())
            ax.plot(series.index, series.rolling(smooth, min_periods=1).mean(), label=name,
                    color=colors[index % len(colors)], linestyle=styles[(index // len(colors)) % len(styles)])
        for label, step in (vlines or {}).items():
            ax.axvline(step, color="gray", linestyle=":", linewidth=1)
            ax.text(step, ax.get_ylim()[1], f" {label}", fontsize=7, va="top", color="gray")
        ax.set_xlabel("iteration")
        ax.set_title(f"{key} (rolling mean of {smooth})", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
