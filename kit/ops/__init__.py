"""Operators that papers invent, each with a reference written from the formula and tests against it.

- :mod:`kit.ops.deform_conv` — deformable convolution v1/v2 (``DeformConv2d``, torchvision's kernel),
  bilinear sampling, and ``conv_output_size``.
- :mod:`kit.ops.deformable_kernels` — Deformable Kernels: offsets in kernel space (``DeformableKernel2d``).
- :mod:`kit.ops.ms_deform_attn` — multi-scale deformable attention (``MSDeformAttn``).
- :mod:`kit.ops.border_align` — BorderDet's border align: max-pooled samples along box sides.
- :mod:`kit.ops.attention` — multi-head attention that returns its maps, attention rollout, class-token
  scores and top tokens, and ``recording`` (the one way to keep a layer's maps for figures).
- :mod:`kit.ops.generalized_attention` — the generalized attention block with four switchable terms.
- :mod:`kit.ops.gumbel` — Gumbel-sigmoid / Gumbel-softmax samples, thresholded masks, temperature decay.
- :mod:`kit.ops.sparse_interp` — Gaussian interpolation from sampled positions, grid prior, sparse conv.
- :mod:`kit.ops.roi_align` — RoIAlign as two matrix products (torchvision's values, a fast CPU backward),
  and a multi-level pooler (torchvision's ``MultiScaleRoIAlign`` rule).
- :mod:`kit.ops.delta_roi_align` — RoIAlign with a learned shift per bin or per RoI (TSD's Δc / Δr pooling).
- :mod:`kit.ops.ps_roi_align` — position-sensitive RoIAlign written to be read (agrees with torchvision's).
- :mod:`kit.ops.tree_filter` — the Learnable Tree Filter: grid MST, two-pass filter along it, dense reference.
"""
