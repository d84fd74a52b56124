"""The study kit: a small library under one executable notebook per paper.

Importing ``kit`` is cheap on purpose: it loads only the profile and runtime helpers. Each
mechanism lives in its own module (``kit.det.assigners``, ``kit.data.shapes``, ...) and a
notebook imports exactly the modules it uses, so that a change to one mechanism marks only
the notebooks that use it as stale.

Layers
------
Read bottom-up; a module imports only from its own layer or the layers below it, and never a
private (``_``-prefixed) name of another module; a module over 300 lines says why in a docstring
line starting "Long because" (``tests/test_layering.py`` checks all three):

1. ``kit.paths``, ``kit.profiles``, ``kit.runtime``, ``kit.io`` — where things are, which scale,
   threads and seeds, atomic writes.
2. ``kit.data`` (generated datasets and their cache), ``kit.ops`` (operators: deformable
   convolution and attention, sampling).
3. ``kit.nn`` — building blocks: backbones, FPN, classifiers.
4. ``kit.det``, ``kit.seg`` — detectors and segmenters, one paper's mechanism per module.
5. ``kit.analysis`` (effective receptive fields, sampling points), ``kit.eval`` (COCO AP, mIoU,
   recall).
6. ``kit.train``, ``kit.checkpoint``, ``kit.experiment``, ``kit.verdicts``, ``kit.results``,
   ``kit.hpo`` — the training loop and its resumable checkpoints, the grid of runs, the verdict
   rule over paired seeds, the results records, hyper-parameter search.
7. ``kit.viz``, ``kit.show`` — figures, explorers, rendered source.
8. ``kit.notebook`` — what every page does first; ``kit.book`` — executing notebooks and
   building the book (not notebook code).

Names
-----
- Counts of best candidates are ``topk`` (ATSS's 9 per level, TOOD's 13); a prefix says where
  one applies: ``pre_nms_topk``. ``k`` alone is never a parameter name.
- Thresholds are ``<quantity>_threshold``: ``iou_threshold``, ``nms_iou_threshold``,
  ``score_threshold``.
- Counts are ``num_<things>`` (``num_classes``, ``num_images``); channel widths are
  ``<where>_channels``.
- An assigner returns a :class:`kit.det.assigners.Assignment`: per prior, the index of the object
  it is assigned to (-1 for background) and the overlap used to decide.

Coordinates
-----------
- Boxes are ``(x1, y1, x2, y2)`` in input-image pixels, as torchvision.ops takes them.
- Points and offsets are ``(x, y)`` — in pixels, or normalised to [0, 1] where the paper's code
  normalises them (Deformable DETR's reference points) — everywhere a function takes or returns
  a position. Array indexing stays ``[..., row, col]``; a value meant as an index is named
  ``row``/``col``, never ``x``/``y``.
- One exception, imposed by the library it feeds: the offsets of
  :func:`torchvision.ops.deform_conv2d` are ``(Δy, Δx)`` pairs; ``kit.ops.deform_conv`` says so
  where it takes or returns them.
"""
from kit.profiles import PROFILES, profile, select
from kit.runtime import device_for, seed_everything, setup

__all__ = ["PROFILES", "profile", "select", "device_for", "seed_everything", "setup"]
__version__ = "0.1.0"
