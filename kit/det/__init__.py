"""Detection: dense one-stage detectors, set (DETR-style) detectors, and what they share.

Shared pieces

- ``boxes`` — box utilities (xyxy pixels): IoU, areas, centres, ltrb distances, centre-ness.
- ``priors`` — point priors: one location per feature-map cell on every FPN level.
- ``validation`` — checks on ground truth and probabilities that losses and assigners take.
- ``losses`` — focal loss (on logits and on probabilities), quality focal loss, GIoU.
- ``assigners`` — label assignment (max-IoU, ATSS, TOOD's TAL, static top-k), returning an ``Assignment``.
- ``postprocess`` — score threshold, pre-NMS top-k, class-wise NMS of dense predictions.

Dense detectors (one paper's mechanism per module)

- ``detector`` — ``DenseDetector`` (backbone, FPN, a ``DenseHead``), ``DenseOutput``, ``dense_detector``.
- ``atss`` — ATSS's head and loss, the chapter's baseline; ``atss_loss_terms`` for papers that build on it.
- ``tood`` — TOOD: the task-aligned head (T-Head) and Task Alignment Learning.
- ``autoassign`` — AutoAssign: differentiable label assignment with a centre prior and ImpObj.
- ``borderdet`` — BorderDet: border alignment and a second, refining stage.
- ``cross_dataset`` — cross-dataset training: merged label spaces, the dataset-aware focal loss.
- ``stitch`` — Stitcher: stitched images and the small-object feedback rule.
- ``hps`` — HPS-Det: the number of positives per object as a (searched, dynamic) hyper-parameter.

Set detectors

- ``hungarian`` — Hungarian matching and the set loss.
- ``transformer`` — DETR's transformer layers.
- ``set_detector`` — what set detectors share at test time (top-k over query-class pairs, no NMS).
- ``detr`` — a small DETR.
- ``deformable_detr`` — a small Deformable DETR.
- ``optimal_transport`` — log-domain Sinkhorn and OTA-style label assignment (dynamic k, background supply).
- ``sparse_rcnn`` — Sparse R-CNN: learnable proposals, dynamic stages, a Hungarian set loss per stage.
- ``dynamic_sparse_rcnn`` — Dynamic Sparse R-CNN: optimal-transport assignment per stage, dynamic proposals.

Two-stage detectors

- ``rpn`` — the region proposal network on one stride-16 map (torchvision's RPN).
- ``two_stage`` — ``TwoStageDetector``: RoI sampling, the Fast R-CNN loss and inference around a ``RoIHead``.
- ``roi_heads`` — the ``RoIHead`` contract, the heavy Faster R-CNN head, a head's FLOPs per map and per RoI.
- ``light_head`` — Light-Head R-CNN's thin map and large separable conv; the R-FCN head.
- ``thundernet`` — ThunderNet: context enhancement, the light RPN, spatial attention, its detector.
- ``tsd`` — TSD, the OpenImages 2019 winner's decoupling head: Δc / Δr pooling, the sibling head, the progressive constraint.
- ``adj_nms`` — Gaussian soft-NMS, adj-NMS (hard NMS, then soft-NMS of the survivors), box and score voting.

Long-tailed detection

- ``region_detector`` — the long-tail chapter's detector: a Fast R-CNN second stage on class-agnostic
  jittered-object proposals, softmax or sigmoid scoring, a pluggable classification loss.
- ``equalization_loss`` — EQL: sigmoid cross-entropy without the rare classes' discouraging gradients.
- ``equilibrium_loss`` — LOCE: the mean classification score per class and the equilibrium loss.
- ``feature_memory`` — LOCE's memory-augmented feature sampling (per-class RoI-feature queues).
- ``missing_annotations`` — the LVIS challenge recipe's fix for missing annotations: auxiliary detection boxes as
  positives, false-background RoIs ignored, EQL with a weight per RoI.
- ``bev_detector``, ``grouped_heads``, ``center_heatmap`` — CBGS: a PointPillars-lite BEV detector,
  class-balanced grouped heads, centre-heatmap targets, loss and decoding.
"""
