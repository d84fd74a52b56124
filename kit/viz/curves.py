"""Training curves from :func:`kit.train.train` histories."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.lines import Line2D


def _line_styles(names: list) -> tuple[dict, list]:
    """name -> (colour, linestyle), and the legend handles.

    Names that are ``(arm, seed)`` pairs get one colour per arm and one line style per seed, so an arm
    reads as one colour whatever the seed. Other names: ten colours, then the same dashed, then dotted.
    """
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    if names and all(isinstance(n, tuple) and len(n) == 2 for n in names):
        arms = list(dict.fromkeys(arm for arm, _ in names))
        seeds = list(dict.fromkeys(seed for _, seed in names))
        if len(arms) > len(colors) or len(seeds) > len(styles):
            raise ValueError(f"(arm, seed) curves need at most {len(colors)} arms and {len(styles)} seeds; "
                             f"got {len(arms)} arms and {len(seeds)} seeds")
        look = {(arm, seed): (colors[arms.index(arm)], styles[seeds.index(seed)]) for arm, seed in names}
        handles = [Line2D([], [], color=colors[i], label=str(arm)) for i, arm in enumerate(arms)]
        handles += [Line2D([], [], color="gray", linestyle=styles[i], label=f"seed {seed}") for i, seed in enumerate(seeds)]
        return look, handles
    look = {name: (colors[i % len(colors)], styles[(i // len(colors)) % len(styles)]) for i, name in enumerate(names)}
    handles = [Line2D([], [], color=c, linestyle=s, label=str(name)) for name, (c, s) in look.items()]
    return look, handles


def training_curves(histories: dict, keys=("loss",), smooth: int = 20, size=(4.2, 3.0), vlines: dict | None = None):
    """One panel per key; one line per run (name -> DataFrame), smoothed by a rolling mean.

    A name may be an ``(arm, seed)`` pair: then colour marks the arm and line style the seed. The
    legend sits under the panels, one for the figure.
    ``vlines`` marks steps (label -> step), e.g. the end of a warm-up.
    """
    keys = list(keys)
    look, handles = _line_styles(list(histories))
    fig, axes = plt.subplots(1, len(keys), figsize=(size[0] * len(keys), size[1]), squeeze=False,
                             layout="constrained")
    for ax, key in zip(axes[0], keys):
        for name, history in histories.items():
            if key not in history:
                continue
            color, linestyle = look[name]
            series = pd.Series(history[key].to_numpy(), index=history["step"].to_numpy())
            ax.plot(series.index, series.rolling(smooth, min_periods=1).mean(), color=color, linestyle=linestyle,
                    label=str(name))
        for label, step in (vlines or {}).items():
            ax.axvline(step, color="gray", linestyle=":", linewidth=1)
            ax.text(step, ax.get_ylim()[1], f" {label}", fontsize=9, va="top", color="gray")
        ax.set_xlabel("iteration")
        ax.set_title(f"{key} (rolling mean of {smooth})", fontsize=9)
    # one legend under the panels, never over a curve
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=9, frameon=False)
    return fig
