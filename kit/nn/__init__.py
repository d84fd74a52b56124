"""Networks and their building blocks, all randomly initialised (no pretrained weights).

- :mod:`kit.nn.backbone` — ``TinyResNet``: a small ResNet (basic blocks) giving C2..C5.
- :mod:`kit.nn.fpn` — ``FPN``: torchvision's feature pyramid over lists of maps.
- :mod:`kit.nn.vit` — ``TinyViT``: a small pre-norm Vision Transformer that returns its attention maps.
- :mod:`kit.nn.dcal` — ``DCAL``: dual cross-attention learning (GLCA and PWCA branches) on a TinyViT.
- :mod:`kit.nn.point_classifier` — ``PointClassifier``: a plain CNN with a pluggable 3x3 operator
  (rigid, DCNv1/v2, Deformable Kernels) that classifies the object at given points.
- :mod:`kit.nn.sparse_resnet` — ``SparseSegNet``: stochastic sparse sampling and interpolation in
  residual bottlenecks, with its FLOP report.
- :mod:`kit.nn.detnet` — ``TinyDetNet``: DetNet's stride-16 extra stages of dilated bottlenecks (types A
  and B), the ResNet-style baseline whose stages 5 and 6 downsample, at matched FLOPs, and
  ``TopDownNeck`` (FPN's top-down path over C4-C6, read at P4) that both feed the detector through.
- :mod:`kit.nn.snet` — ``SNet``: ThunderNet's ShuffleNetV2-style backbone with 5x5 depthwise units.
- :mod:`kit.nn.receptive_field` — ``ReceptiveField`` / ``receptive_field``: the theoretical RF of a
  chain of layers and where its units sit in the image.
"""
