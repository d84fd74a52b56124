"""Analysis of trained models.

- :mod:`kit.analysis.erf` — effective receptive fields (input gradients of one unit), their radius,
  mass inside an object, and the mean over objects centred on each.
- :mod:`kit.analysis.sampling_points` — effective sampling locations of stacked deformable layers
  (``record_deformable``, ``stacked_sampling_points``).
"""
