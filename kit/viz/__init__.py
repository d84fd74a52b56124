"""Figures: images with boxes, per-level maps, assignments, curves, and widget explorers.

Every function draws into matplotlib axes (and returns the figure), so a notebook shows a
static figure the book can render; :func:`kit.viz.explorer.explorer` adds sliders on top
when a live kernel is there.
"""
