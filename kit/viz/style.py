"""The kit's one figure style, applied once per notebook by :func:`kit.notebook.start`.

Notebooks do not set matplotlib parameters themselves: a change here changes every page.
"""
from __future__ import annotations

import matplotlib as mpl

# 80 dpi at the inline backend and in saved files; 9-pt text.
STYLE = {"figure.dpi": 80, "savefig.dpi": 80, "font.size": 9}


def apply() -> None:
    """Set :data:`STYLE` in matplotlib's rcParams."""
    mpl.rcParams.update(STYLE)
