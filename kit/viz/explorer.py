"""Widget explorers that also leave a static figure for the book.

``explorer(draw, controls, defaults)`` always draws ``draw(**defaults)`` once as an ordinary
figure (what the rendered book and a reader without a kernel see). When the notebook runs in
a live Jupyter kernel with ipywidgets, it also shows sliders that re-run ``draw``; in the
static book those sliders are rendered but inert, so the caption says so.
"""
from __future__ import annotations

import matplotlib.pyplot as plt


def in_live_kernel() -> bool:
    """True inside a Jupyter kernel (JupyterLab, nbclient, nbval) with ipywidgets importable."""
    try:
        from IPython import get_ipython
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def explorer(draw, controls: dict, defaults: dict, static: bool = True):
    """Show ``draw(**defaults)`` as a static figure, then (live kernel only) an interactive version.

    draw(**values) makes one matplotlib figure; controls maps argument names to ipywidgets
    controls, ``(min, max, step)`` tuples (sliders) or lists (drop-downs); defaults gives every
    argument's starting value. Returns the ipywidgets object, or None without a kernel.
    """
    missing = set(controls) - set(defaults)
    if missing:
        raise ValueError(f"every control needs a default value; missing {sorted(missing)}")
    if static:
        draw(**defaults)
        plt.show()
    if not in_live_kernel():
        return None
    import ipywidgets as widgets
    from IPython.display import display

    sliders = {name: _widget(name, control, defaults[name]) for name, control in controls.items()}
    fixed = {k: widgets.fixed(v) for k, v in defaults.items() if k not in controls}

    def redraw(**values):
        draw(**values)
        plt.show()

    caption = widgets.HTML("<i>Explorer: move the controls in JupyterLab to re-run the mechanism "
                           "(in the static book they do not respond; the figure above shows the defaults).</i>")
    interactive = widgets.interactive(redraw, **sliders, **fixed)
    display(widgets.VBox([caption, interactive]))
    return interactive


def _widget(name: str, control, default):
    """A widget from a widget, a (min, max, step) tuple or a list of options, set to ``default``."""
    import ipywidgets as widgets

    style = {"description_width": "initial"}
    if isinstance(control, widgets.Widget):
        control.value = default
        return control
    if isinstance(control, (list, tuple)) and len(control) == 3 and all(isinstance(v, (int, float)) for v in control) \
            and not isinstance(control, list):
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
