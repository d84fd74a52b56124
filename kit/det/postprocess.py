"""Post-processing of dense predictions: score threshold, pre-NMS top-k, class-wise NMS.

Follows mmdetection's dense-head test path (``filter_scores_and_topk`` then ``batched_nms``),
with :func:`torchvision.ops.batched_nms` doing the suppression per class.
"""
from __future__ import annotations

import torch
from torchvision.ops import batched_nms


def postprocess(scores: torch.Tensor, boxes: torch.Tensor, score_thr: float = 0.05,
                nms_iou: float = 0.6, pre_nms_topk: int = 1000, max_per_image: int = 100):
    """Turn dense predictions into detections.

    scores: (B, N, C) probabilities; boxes: (B, N, 4) xyxy. Returns one dict per image with
    ``boxes`` (D, 4), ``scores`` (D,) and ``labels`` (D,), sorted by score.
    """
    if scores.dim() != 3 or boxes.dim() != 3 or boxes.shape[:2] != scores.shape[:2] or boxes.shape[-1] != 4:
        raise ValueError(f"need scores (B, N, C) and boxes (B, N, 4); got {tuple(scores.shape)} and {tuple(boxes.shape)}")
    if not 0 < nms_iou <= 1:
        raise ValueError(f"nms_iou must be in (0, 1], got {nms_iou}")
    results = []
    num_classes = scores.shape[-1]
    for image_scores, image_boxes in zip(scores.detach(), boxes.detach()):
        flat = image_scores.flatten()  # (N * C,)
        keep = torch.nonzero(flat > score_thr).flatten()
        if keep.numel() > pre_nms_topk:
            keep = keep[flat[keep].topk(pre_nms_topk).indices]
        prior, label = keep // num_classes, keep % num_classes
        det_boxes, det_scores = image_boxes[prior].float(), flat[keep].float()
        kept = batched_nms(det_boxes, det_scores, label, nms_iou)[:max_per_image]
        results.append({"boxes": det_boxes[kept], "scores": det_scores[kept], "labels": label[kept]})
    return results
