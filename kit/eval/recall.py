"""Recall per class at a fixed score threshold: how many objects a detector finds at all.

AP ranks detections and hides a uniformly low score; recall at an operating point shows it.
Cross-dataset training (arXiv 2001.04621) uses it to show the false negatives of naive
merging: classes that are background in part of the training data get low scores. A ground
truth counts as found when a detection of its class with score >= ``score_thr`` overlaps it
with IoU >= ``iou_thr`` (one detection may match one object; greedy by score, as COCO).
"""
from __future__ import annotations

import torch
from torchvision.ops import box_iou


def recall_by_class(detections: list[dict], gt_boxes: list, gt_labels: list, num_classes: int,
                    score_thr: float = 0.3, iou_thr: float = 0.5) -> torch.Tensor:
    """(C,) recall per class (NaN for a class without ground truth).

    detections: per image ``{boxes (D, 4), scores (D,), labels (D,)}``; gt_boxes / gt_labels:
    per image (M, 4) / (M,).
    """
    if not len(detections) == len(gt_boxes) == len(gt_labels):
        raise ValueError(f"need one entry per image: {len(detections)} detections, {len(gt_boxes)} box "
                         f"and {len(gt_labels)} label tensors")
    if not 0 <= score_thr <= 1 or not 0 < iou_thr <= 1:
        raise ValueError(f"need score_thr in [0, 1] and iou_thr in (0, 1], got {score_thr}, {iou_thr}")
    found = torch.zeros(num_classes)
    total = torch.zeros(num_classes)
    for det, boxes, labels in zip(detections, gt_boxes, gt_labels):
        labels = labels.cpu()
        total += torch.bincount(labels, minlength=num_classes)[:num_classes].float()
        keep = det["scores"].cpu() >= score_thr
        d_boxes, d_scores, d_labels = det["boxes"].cpu()[keep], det["scores"].cpu()[keep], det["labels"].cpu()[keep]
        ious = box_iou(d_boxes.float(), boxes.cpu().float()) if len(d_boxes) and len(boxes) else None
        matched = torch.zeros(len(boxes), dtype=torch.bool)
        for d in torch.argsort(d_scores, descending=True).tolist() if ious is not None else []:
            candidates = (d_labels[d] == labels) & ~matched & (ious[d] >= iou_thr)
            if candidates.any():
                best = torch.where(candidates, ious[d], torch.full_like(ious[d], -1)).argmax()
                matched[best] = True
        found += torch.bincount(labels[matched], minlength=num_classes)[:num_classes].float()
    return torch.where(total > 0, found / total.clamp(min=1), torch.full_like(total, float("nan")))
