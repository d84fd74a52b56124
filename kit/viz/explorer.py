"""Explorers: one set of controls over a mechanism, live in JupyterLab, precomputed in the book.

``explorer(draw, controls, defaults, frames)`` shows the mechanism once, in one output:

* in a live kernel (JupyterLab; also nbclient, when the book's notebooks execute) an ipywidgets
  panel whose controls re-run ``draw`` for any value;
* in the same output, as its HTML alternative, the same controls over figures drawn now for
  the values ``frames`` declares (a few per control; every combination is drawn). The book
  renders that alternative (``book/_config.yml`` ranks text/html above widgets) and
  ``book/_static/kit-book.js`` swaps the frames as the reader moves a control: no kernel, no
  network. Outside a kernel (a plain script) only the default figure is drawn.

Frames are PNGs at twice the figure's pixel size, shown at its layout size (crisp on a
high-density screen). All of an explorer's frames together must fit :data:`FRAME_BUDGET_BYTES`;
the caption states how many frames there are and how much they weigh.
"""
from __future__ import annotations

import base64
import html
import io
import itertools
import json

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

FRAME_BUDGET_BYTES = 1_500_000  # what one explorer may add to its page (base64 PNGs)
DENSITY = 2  # frame pixels per layout pixel


def in_live_kernel() -> bool:
    """True inside a Jupyter kernel (JupyterLab, nbclient, nbval) with ipywidgets importable."""
    try:
        from IPython import get_ipython
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def explorer(draw, controls: dict, defaults: dict, frames: dict | None = None) -> None:
    """Show ``draw`` under its controls: live in a kernel, over precomputed frames in the book.

    draw(**values) makes one matplotlib figure. controls maps argument names to ipywidgets
    controls, ``(min, max, step)`` tuples (sliders) or lists (drop-downs); defaults gives every
    argument's starting value. frames maps control names to the values the book precomputes
    (each list must hold the default; a control left out stays at its default in the book);
    together they must give at least two frames. Without ``frames`` the book steps through a few
    values of the first control only (:func:`_first_control_frames`). Returns None (the explorer is displayed, not
    returned, so Jupyter does not show it a second time).
    """
    missing = set(controls) - set(defaults)
    if missing:
        raise ValueError(f"every control needs a default value; missing {sorted(missing)}")
    widgets_by_name = {name: _widget(name, control, defaults[name]) for name, control in controls.items()} \
        if in_live_kernel() else None
    frame_values = _frame_values(controls, defaults, frames if frames is not None else _first_control_frames(controls, defaults))
    if widgets_by_name is None:
        draw(**defaults)
        plt.show()
        return None
    static_html = _static_html(draw, defaults, frame_values)
    panel = _live_panel(draw, widgets_by_name, defaults)
    from IPython.display import display

    display({"application/vnd.jupyter.widget-view+json": {"version_major": 2, "version_minor": 0,
                                                          "model_id": panel.model_id},
             "text/html": static_html,
             "text/plain": f"Explorer over {', '.join(controls)}"}, raw=True)
    return None


def _frame_values(controls: dict, defaults: dict, frames: dict) -> dict:
    """name -> the values the book precomputes (the default alone for a control not in frames)."""
    unknown = set(frames) - set(controls)
    if unknown:
        raise ValueError(f"frames names {sorted(unknown)}, which are not controls; controls are {sorted(controls)}")
    values = {}
    for name, control in controls.items():
        chosen = list(frames.get(name, [defaults[name]]))
        if defaults[name] not in chosen:
            raise ValueError(f"frames for {name!r} must include its default {defaults[name]!r}, got {chosen}")
        if len(set(map(repr, chosen))) != len(chosen):
            raise ValueError(f"frames for {name!r} repeat a value: {chosen}")
        for value in chosen:
            _check_value(name, control, value)
        values[name] = chosen
    if max(len(v) for v in values.values()) < 2:
        raise ValueError("an explorer needs at least two frames for the book: give frames={control: [values]} "
                         f"for one of {sorted(controls)}")
    return values


def _first_control_frames(controls: dict, defaults: dict) -> dict:
    """The frames when none are declared: the first control's ends, middle and default (or its first options)."""
    name, control = next(iter(controls.items()))
    default = defaults[name]
    if isinstance(control, list):
        chosen = [default] + [v for v in control if v != default][:3]
        return {name: sorted(chosen, key=control.index)}
    if isinstance(control, tuple) and len(control) == 3:
        low, high, step = control
        middle = low + round((high - low) / 2 / step) * step
        chosen = sorted({low, middle, high, default})
        return {name: chosen}
    return {name: [default]}


def _check_value(name: str, control, value) -> None:
    """Refuse a frame value the live control could not take."""
    if isinstance(control, list) and value not in control:
        raise ValueError(f"frame value {value!r} of {name!r} is not one of its options {control}")
    if isinstance(control, tuple) and len(control) == 3 and not control[0] <= value <= control[1]:
        raise ValueError(f"frame value {value!r} of {name!r} is outside its range [{control[0]}, {control[1]}]")


def _render(draw, values: dict) -> tuple[str, int]:
    """One frame: ``draw(**values)`` as a base64 PNG at DENSITY x, and its layout width in px.

    The frame is the figure ``draw`` returns, else the one figure it opened.
    """
    before = set(plt.get_fignums())
    returned = draw(**values)
    new = [plt.figure(n) for n in plt.get_fignums() if n not in before]
    figure = returned if isinstance(returned, Figure) else (new[0] if len(new) == 1 else None)
    for other in new:
        if other is not figure:
            plt.close(other)
    if figure is None:
        raise ValueError(f"draw(**values) must return a figure or open exactly one; it opened {len(new)} "
                         "(and must not call plt.show(), which hands the figure to the page)")
    buffer = io.BytesIO()
    # cropped to what is drawn, titles included, as the inline backend crops a page's figures
    figure.savefig(buffer, format="png", dpi=figure.dpi * DENSITY, bbox_inches="tight")
    plt.close(figure)
    png = buffer.getvalue()
    width = round(int.from_bytes(png[16:20], "big") / DENSITY)  # the PNG header's pixel width, at layout size
    return base64.b64encode(png).decode(), width


def _static_html(draw, defaults: dict, frame_values: dict) -> str:
    """The book's explorer: controls stepping through every combination of the frame values."""
    names = list(frame_values)
    frames, width = {}, 0
    for indices in itertools.product(*(range(len(frame_values[n])) for n in names)):
        values = dict(defaults) | {n: frame_values[n][i] for n, i in zip(names, indices)}
        png, width = _render(draw, values)
        frames[",".join(map(str, indices))] = "data:image/png;base64," + png
    size = sum(len(f) for f in frames.values())
    if size > FRAME_BUDGET_BYTES:
        raise ValueError(f"the explorer's {len(frames)} frames weigh {size / 1e6:.2f} MB, over its "
                         f"{FRAME_BUDGET_BYTES / 1e6:.1f} MB budget; declare fewer values in frames=")
    start = [frame_values[n].index(defaults[n]) for n in names]
    rows = []
    for name, first in zip(names, start):
        shown = [_label(v) for v in frame_values[name]]
        if len(shown) == 1:
            rows.append(f"<span class='kit-explorer-fixed'>{html.escape(name)} = {html.escape(shown[0])}</span>")
            continue
        rows.append(f"<label>{html.escape(name)} <input type='range' min='0' max='{len(shown) - 1}' step='1' "
                    f"value='{first}' data-kit-control='{html.escape(name)}' "
                    f"data-labels='{html.escape(json.dumps(shown))}'> <output>{html.escape(shown[first])}</output></label>")
    caption = (f"Explorer: {len(frames)} frames drawn when this notebook ran ({size / 1e6:.2f} MB), for the values "
               "the controls step through. In JupyterLab the same controls re-run the mechanism for any value.")
    default_key = ",".join(map(str, start))
    return (f"<div class='kit-explorer'><div class='kit-explorer-controls'>{' '.join(rows)}</div>"
            f"<img class='kit-explorer-image' src='{frames[default_key]}' width='{width}' "
            f"data-density='{DENSITY}' alt='explorer frame'>"
            f"<p class='kit-explorer-caption'><i>{html.escape(caption)}</i></p>"
            f"<script type='application/json' class='kit-explorer-frames'>{json.dumps(frames)}</script></div>")


def _label(value) -> str:
    """A frame value as the book's control shows it."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _live_panel(draw, widgets_by_name: dict, defaults: dict):
    """The ipywidgets panel: the controls and an output that re-runs ``draw`` when they move."""
    import ipywidgets as widgets

    fixed = {k: widgets.fixed(v) for k, v in defaults.items() if k not in widgets_by_name}

    def redraw(**values):
        draw(**values)
        plt.show()

    caption = widgets.HTML("<i>Explorer: move a control to re-run the mechanism.</i>")
    return widgets.VBox([caption, widgets.interactive(redraw, **widgets_by_name, **fixed)])


def _widget(name: str, control, default):
    """A widget from a widget, a (min, max, step) tuple or a list of options, set to ``default``."""
    import ipywidgets as widgets

    style = {"description_width": "initial"}
    if isinstance(control, widgets.Widget):
        control.value = default
        return control
    if isinstance(control, tuple) and len(control) == 3 and all(isinstance(v, (int, float)) for v in control):
        low, high, step = control
        if not low <= default <= high:
            raise ValueError(f"default {default!r} of {name!r} is outside its range [{low}, {high}]")
        kind = widgets.IntSlider if all(isinstance(v, int) for v in (low, high, step, default)) else widgets.FloatSlider
        return kind(value=default, min=low, max=high, step=step, description=name, style=style,
                    continuous_update=False)
    if isinstance(control, list):
        if default not in control:
            raise ValueError(f"default {default!r} of {name!r} is not one of its options {control}")
        return widgets.Dropdown(options=control, value=default, description=name, style=style)
    raise ValueError(f"control {name!r}: use an ipywidgets widget, a (min, max, step) tuple or a list of options")
