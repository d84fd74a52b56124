"""Recall per class at a fixed score threshold: how many objects a detector finds at all.

AP ranks detections and hides a uniformly low score; recall at an operating point shows it.
Cross-dataset training (arXiv 2001.04621) uses it to show the false negatives of naive
merging: classes that are background in part of the training data get low scores. A ground
truth counts as found when a detection of its class with score >= ``score_threshold`` overlaps it
with IoU >= ``iou_threshold`` (one detection may match one object; greedy by score, as COCO).
"""
from __future__ import annotations

import torch
from torchvision.ops import box_iou

from kit.eval.coco import check_image_detections


def _check_image(index: int, det: dict, boxes: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    """Image ``index``: finite detections with one score and label per box; ground truth with
    one label per box, labels in [0, num_classes) (others would drop out of the counts)."""
    check_image_detections(det, f"detections[{index}]", list(range(num_classes)))
    if boxes.dim() != 2 or boxes.shape[1] != 4 or tuple(labels.shape) != (len(boxes),):
        raise ValueError(f"gt_boxes[{index}] {tuple(boxes.shape)} and gt_labels[{index}] {tuple(labels.shape)} "
                         f"must be (M, 4) and (M,)")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"gt_labels[{index}] has labels in [{int(labels.min())}, {int(labels.max())}]; "
                         f"allowed: [0, {num_classes})")


def recall_by_class(detections: list[dict], gt_boxes: list, gt_labels: list, num_classes: int,
                    score_threshold: float = 0.3, iou_threshold: float = 0.5) -> torch.Tensor:
    """(C,) recall per class (NaN for a class without ground truth).

    detections: per image ``{boxes (D, 4), scores (D,), labels (D,)}``; gt_boxes / gt_labels:
    per image (M, 4) / (M,).
    """
    if not len(detections) == len(gt_boxes) == len(gt_labels):
        raise ValueError(f"need one entry per image: {len(detections)} detections, {len(gt_boxes)} box "
                         f"and {len(gt_labels)} label tensors")
    if not 0 <= score_threshold <= 1 or not 0 < iou_threshold <= 1:
        raise ValueError(f"need score_threshold in [0, 1] and iou_threshold in (0, 1], got {score_threshold}, {iou_threshold}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    found = torch.zeros(num_classes)
    total = torch.zeros(num_classes)
    for index, (det, boxes, labels) in enumerate(zip(detections, gt_boxes, gt_labels)):
        _check_image(index, det, boxes, labels, num_classes)
        labels = labels.cpu()
        total += torch.bincount(labels, minlength=num_classes)[:num_classes].float()
        keep = det["scores"].cpu() >= score_threshold
        d_boxes, d_scores, d_labels = det["boxes"].cpu()[keep], det["scores"].cpu()[keep], det["labels"].cpu()[keep]
        ious = box_iou(d_boxes.float(), boxes.cpu().float()) if len(d_boxes) and len(boxes) else None
        matched = torch.zeros(len(boxes), dtype=torch.bool)
        for d in torch.argsort(d_scores, descending=True).tolist() if ious is not None else []:
            candidates = (d_labels[d] == labels) & ~matched & (ious[d] >= iou_threshold)
            if candidates.any():
                best = torch.where(candidates, ious[d], torch.full_like(ious[d], -1)).argmax()
                matched[best] = True
        found += torch.bincount(labels[matched], minlength=num_classes)[:num_classes].float()
    return torch.where(total > 0, found / total.clamp(min=1), torch.full_like(total, float("nan")))
