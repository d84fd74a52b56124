"""Generated datasets: nothing is ever downloaded; every set is drawn from a seed.

- :mod:`kit.data.shapes` — shape scenes for detection and segmentation: boxes, labels, visible
  masks, COCO export (most pages).
- :mod:`kit.data.seg_scenes` — segmentation scenes: class maps with an ignore label (255), per-image
  scale regimes, appearance styles, label spaces with their remap tables (P23, P24, P33, P36).
- :mod:`kit.data.context_scenes` — one key ring decides every object's label (P41's spatial
  attention); its slot sampling and painting also draw :mod:`kit.data.two_ring_scenes`.
- :mod:`kit.data.two_ring_scenes` — two rings, each object reads the nearer one (P41's exercise).
- :mod:`kit.data.emblem_scenes` — plain shapes whose class is a small off-centre emblem (P10, TSD);
  a crowded split.
- :mod:`kit.data.finegrained` — classes that differ by one small marker (P30, DCAL).
- :mod:`kit.data.longtail_scenes` — long-tailed (shape, hue family) classes with LVIS groups and the
  federated annotation (verified negatives, not-exhaustive classes), LVIS json (P09, P16, P02).
- :mod:`kit.data.bev_scenes` — bird's-eye-view point-cloud scenes with a nuScenes-like long tail (P25);
  :mod:`kit.data.cbgs` — CBGS's class-balanced resampling by sample membership.
- :mod:`kit.data.raster` — the drawing maths the generators share: pixel centres, object frames,
  shape tests, HSV colours, textured backgrounds, discs, tight boxes.
- :mod:`kit.data.dataset` — :class:`~kit.data.dataset.GeneratedDataset`, the base of every
  dataset (``len``, ``to``, ``subset``, ``batch``, ``batch_for``, ``batches``), and ``check_config``.
- :mod:`kit.data.sampling` — ``epoch_sampler``: the indices of a training step, a pure function of it.
- :mod:`kit.data.class_sampling` — ``repeat_factor_sampler`` (LVIS) and ``class_aware_sampler`` for
  long-tailed sets, pure functions of the step too.
- :mod:`kit.data.shape_drawing` — the shape scenes' drawing steps as public functions (sample,
  occlude, paint, pack), which the long-tail generator reuses.
- :mod:`kit.data.cache` — the verified on-disk cache of generated tensors (CPU shape scenes).
"""
