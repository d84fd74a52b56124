"""The kit's one figure style, applied once per notebook by :func:`kit.notebook.start`.

Notebooks do not set matplotlib parameters themselves: a change here changes every page.

Sizes are chosen for the book's column (~950 px at a 1280-px window): a figure up to 11.8 in
wide at 80 dpi fits it unshrunk, and 9-pt text is 10 px on screen. In a notebook the inline
backend draws PNGs at twice those pixels ("retina"), labelled with their layout size, so the
book shows them at the same size, crisp on a high-density screen.
"""
from __future__ import annotations

import matplotlib as mpl

# 80 dpi at the inline backend and in saved files; 9-pt text (10 px on screen), titles and legends included
# (matplotlib's default titles are 'large', so a title set without a size would stand out from the rest).
STYLE = {"figure.dpi": 80, "savefig.dpi": 80, "font.size": 9, "axes.titlesize": 9, "legend.fontsize": 9}
COLUMN_INCHES = 11.8  # the widest figure that fits the book's column unshrunk, at 80 dpi
MIN_TEXT_POINTS = 9  # no figure text smaller (9 pt at 80 dpi is 10 px); tests/test_book.py checks the sources


def apply() -> None:
    """Set :data:`STYLE` in matplotlib's rcParams; in a notebook, draw inline figures at 2x pixels."""
    mpl.rcParams.update(STYLE)
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:
        return
    if get_ipython() is not None:
        set_matplotlib_formats("retina")
