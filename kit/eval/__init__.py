"""Evaluation of trained models, one module per measure.

- :mod:`kit.eval.coco` — COCO box AP through pycocotools (area ranges scaled to small images),
  the checks it runs on detections, and :func:`~kit.eval.coco.evaluate_detector` /
  :func:`~kit.eval.coco.predict_batches`, the validation loops over a dataset.
- :mod:`kit.eval.lvis` — federated LVIS box AP (AP, AP50, AP75, APr, APc, APf) on pycocotools.
- :mod:`kit.eval.center_distance` — nuScenes' centre-distance AP (P25).
- :mod:`kit.eval.recall` — recall per class at a fixed score threshold.
- :mod:`kit.eval.alignment` — TOOD's misalignment diagnostics (best-scored vs best-IoU prior)
  and Kendall's tau.
- :mod:`kit.eval.segmentation` — semantic targets of shape scenes, confusion matrix and mean IoU.
- :mod:`kit.eval.seg_metrics` — mIoU with an ignore label, boundary F-score (BF1) and boundary IoU.
"""
