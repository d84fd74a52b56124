"""Semantic segmentation: segmenters, one paper's mechanism per module, and what they share.

- ``models`` — ``TinyFCN`` (TinyResNet C2-C5 + a top-down decoder to full-resolution logits),
  ``segmentation_loss`` (cross-entropy with ignore label 255), the chapter's baseline segmenter.
- ``tree_filter_net`` — the Learnable Tree Filter in TinyFCN's top-down fusions (P24):
  ``TreeFilterFusion``, ``NonLocalBlock`` (the same slot), ``TreeFilterFCN`` (plain / tree_filter /
  non_local; with the plain sum it is TinyFCN).
- ``dataset_bn`` — CDCL's dataset-aware BN (P33): ``DatasetBatchNorm2d`` (one BatchNorm2d per
  dataset), ``convert_to_dataset_bn``, ``set_dataset``, ``using_dataset``.
- ``alternation`` — CDCL's dataset alternation training (P33): ``dataset_at``,
  ``alternating_batch_for``, ``iteration_batches``, ``dat_loss``; ``sampled_dataset_at`` (ablation).
- ``cross_dataset`` — CDCL's segmenter (P33): ``CrossDatasetSegmenter`` (TinyFCN's trunk with
  dataset-aware or shared BN and one 1x1 head per dataset), ``joint_loss``,
  ``parameter_accounting``, ``branch_statistics``.
- ``dynamic_routing`` — Dynamic Routing (P23): the routing space of cells (SepConv + identity)
  with soft conditional gates max(0, tanh), per-image cell dropping, expected and real FLOPs, the
  budget loss, ``DynamicRoutingNet``, the static special cases as fixed gates
  (``special_case_gates``, ``matched_hrnet_gates``).
- ``seg_losses`` — the hand-crafted metric losses Auto Seg-Loss compares with (P36):
  ``lovasz_softmax`` (with ``lovasz_grad``), ``dice_loss``.
- ``auto_seg_loss`` — Auto Seg-Loss' surrogates (P36): piecewise quadratic Bézier curves
  (``bezier_curve``, ``control_points_from_theta``), ``miou_surrogate``, ``bf1_surrogate``,
  ``auto_seg_loss``, the official searched control points. Its search policy is
  :mod:`kit.hpo.truncated_normal_ppo`.
"""
