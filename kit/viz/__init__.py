"""Figures: every function draws into matplotlib axes (and returns the figure), so a notebook shows
a static figure the book can render; :func:`kit.viz.explorer.explorer` adds controls when a live
kernel is there.

- :mod:`kit.viz.style` — the kit's one figure style.
- :mod:`kit.viz.boxes` — images with boxes: ground truth, detections, a grid of examples.
- :mod:`kit.viz.maps` — per-level maps over the image, and the helpers of every map-over-an-image figure.
- :mod:`kit.viz.assign` — label-assignment plots: which priors are positive for which object.
- :mod:`kit.viz.attention` — attention weights over an image, chosen tokens, sampling points.
- :mod:`kit.viz.erf` — effective receptive fields, the theoretical RF, sampling points, kernel space.
- :mod:`kit.viz.curves` — training curves from :func:`kit.train.train` histories.
- :mod:`kit.viz.verdict` — paired seeds per claim and a metric over training.
- :mod:`kit.viz.explorer` — explorers: controls over a mechanism, live or precomputed in the book.
"""
