"""How well classification and localisation agree: TOOD's misalignment diagnostics.

For an object, a detector ranks its priors twice: by the classification score of the
object's class, and (implicitly) by how well each prior's predicted box fits the object.
NMS keeps the best-*scored* box, so when the two rankings disagree, a well-localised box is
suppressed by a worse one. TOOD (arXiv 2108.07755) measures this as the distance between
the prior with the highest score and the prior with the highest IoU.

Here, per object, over the priors whose centre lies inside it (all levels together):

* ``distance``: pixels between the best-scored prior and the best-IoU prior (0 if the same);
* ``same``: whether they are the same prior;
* ``iou_of_best_scored``: the IoU that NMS would keep, against the best IoU available.
"""
from __future__ import annotations

import torch

from kit.det.validation import check_shape
from kit.det.boxes import box_iou, points_inside


def misalignment(scores: torch.Tensor, pred_boxes: torch.Tensor, points: torch.Tensor,
                 gt_boxes: torch.Tensor, gt_labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-object misalignment for one image.

    scores: (N, C) the scores ranked at test time; pred_boxes: (N, 4); points: (N, 2);
    gt_boxes: (M, 4); gt_labels: (M,). Returns per-object tensors (M',) for the M' objects
    with at least one prior inside: ``distance``, ``same``, ``iou_of_best_scored``, ``best_iou``.
    """
    if scores.shape[0] != pred_boxes.shape[0] or points.shape[0] != scores.shape[0]:
        raise ValueError(f"scores {tuple(scores.shape)}, pred_boxes {tuple(pred_boxes.shape)} and "
                         f"points {tuple(points.shape)} must describe the same priors")
    check_shape("scores", scores, (None, None))
    check_shape("pred_boxes", pred_boxes, (None, 4))
    check_shape("points", points, (None, 2))
    check_shape("gt_boxes", gt_boxes, (None, 4))
    check_shape("gt_labels", gt_labels, (gt_boxes.shape[0],))
    num_classes = scores.shape[1]
    if gt_labels.numel() and (gt_labels.min() < 0 or gt_labels.max() >= num_classes):  # -1 would index the last class
        raise ValueError(f"gt_labels must be class ids in [0, {num_classes}) (no -1 padding), got labels in "
                         f"[{int(gt_labels.min())}, {int(gt_labels.max())}]")
    for name, tensor in (("scores", scores), ("pred_boxes", pred_boxes)):
        if not torch.isfinite(tensor).all():  # argmax would pick a NaN as the best
            raise ValueError(f"{name} has {int((~torch.isfinite(tensor)).sum())} non-finite values; need finite ones")
    inside = points_inside(points, gt_boxes)  # (N, M)
    has_prior = inside.any(0)
    ious = box_iou(pred_boxes.float(), gt_boxes.float()).masked_fill(~inside, -1.0)  # (N, M)
    object_scores = scores[:, gt_labels].float().masked_fill(~inside, -1.0)  # (N, M)
    best_scored = object_scores.argmax(0)  # (M,)
    best_fit = ious.argmax(0)
    index = torch.arange(gt_boxes.shape[0], device=scores.device)
    result = {
        "distance": (points[best_scored] - points[best_fit]).norm(dim=-1),
        "same": best_scored == best_fit,
        "iou_of_best_scored": ious[best_scored, index],
        "best_iou": ious[best_fit, index],
    }
    return {k: v[has_prior] for k, v in result.items()}


def kendall_tau(x: torch.Tensor, y: torch.Tensor) -> float:
    """Kendall's rank correlation (tau-b) of two 1-D samples, via SciPy."""
    from scipy.stats import kendalltau

    if x.numel() < 2:
        return float("nan")
    return float(kendalltau(x.detach().cpu().numpy(), y.detach().cpu().numpy()).statistic)
