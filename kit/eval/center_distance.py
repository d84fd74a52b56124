"""nuScenes detection AP by centre distance (Caesar et al. 2020; used by P25, CBGS, arXiv 1908.09492).

nuScenes does not match boxes by IoU: a prediction is a true positive when its BEV centre lies within
a distance threshold of an unmatched ground-truth box of its class in the same sample. Per class and
threshold (``nuscenes/eval/detection/algo.py``: ``accumulate`` then ``calc_ap``):

1. predictions in descending score, ties broken by the *later* prediction first (the devkit sorts
   (score, index) pairs and reverses them);
2. each takes the nearest untaken GT of its class in its sample (xy distance); a match iff that
   distance is **strictly below** the threshold; the GT is then taken;
3. precision and recall from the cumulative TP/FP counts; precision interpolated at 101 recalls
   ``linspace(0, 1, 101)`` by ``np.interp(..., right=0)`` (no monotone envelope, unlike COCO);
4. AP = mean over the recalls above ``min_recall`` (the first ``round(100 min_recall) + 1`` points
   dropped) of ``max(precision - min_precision, 0)``, divided by ``1 - min_precision``.

A class without GT, or without predictions, has AP 0 (the devkit's ``no_predictions``). mAP is the
mean over classes and the thresholds {0.5, 1, 2, 4} m. Not done here: the devkit's filters (class
ranges, boxes without points, bike racks) and the TP error metrics of NDS.
"""
from __future__ import annotations

import numpy as np

THRESHOLDS = (0.5, 1.0, 2.0, 4.0)
RECALLS = np.linspace(0, 1, 101)


def _array(name: str, value, dims: int, dtype) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != dims or (dims == 2 and array.shape[1] != 2):
        raise ValueError(f"{name} must be {'(n, 2)' if dims == 2 else '(n,)'}, got shape {array.shape}")
    if dtype is float:
        if array.size and not np.issubdtype(array.dtype, np.number):
            raise TypeError(f"{name} must be numbers, got {array.dtype}")
        array = array.astype(np.float64)
        if not np.isfinite(array).all():
            raise ValueError(f"{name} must be finite (found NaN or inf)")
    elif array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must be integers, got {array.dtype}")
    return array.astype(np.int64) if dtype is int else array


def check_inputs(gt_xy, gt_sample, pred_xy, pred_score, pred_sample):
    """The five arrays as NumPy, checked: xy (n, 2) finite, scores (n,) finite, sample ids (n,) ints, lengths matching."""
    gt_xy, pred_xy = _array("gt_xy", gt_xy, 2, float), _array("pred_xy", pred_xy, 2, float)
    gt_sample, pred_sample = _array("gt_sample", gt_sample, 1, int), _array("pred_sample", pred_sample, 1, int)
    pred_score = _array("pred_score", pred_score, 1, float)
    if len(gt_sample) != len(gt_xy):
        raise ValueError(f"gt_sample has {len(gt_sample)} entries, gt_xy {len(gt_xy)}")
    if not len(pred_score) == len(pred_sample) == len(pred_xy):
        raise ValueError(f"pred_xy, pred_score and pred_sample must have one entry per prediction, got "
                         f"{len(pred_xy)}, {len(pred_score)}, {len(pred_sample)}")
    return gt_xy, gt_sample, pred_xy, pred_score, pred_sample


def check_threshold(threshold) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (np.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a finite distance > 0 (metres), got {threshold!r}")


def match(gt_xy, gt_sample, pred_xy, pred_score, pred_sample, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(order, tp): predictions in the devkit's order, and whether each (in that order) is a TP."""
    check_threshold(threshold)
    gt_xy, gt_sample, pred_xy, pred_score, pred_sample = check_inputs(gt_xy, gt_sample, pred_xy, pred_score,
                                                                      pred_sample)
    order = np.lexsort((np.arange(len(pred_score)), pred_score))[::-1]  # score desc, ties: later first
    tp = np.zeros(len(order), dtype=bool)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    for sample in np.intersect1d(np.unique(pred_sample), np.unique(gt_sample)):  # samples are independent
        gts = gt_xy[gt_sample == sample]  # (g, 2)
        mine = np.flatnonzero(pred_sample == sample)
        mine = mine[np.argsort(rank[mine])]  # this sample's predictions, in the global order
        distance = np.linalg.norm(pred_xy[mine, None] - gts[None], axis=2)  # (p, g)
        taken = np.zeros(len(gts), dtype=bool)
        for row, prediction in enumerate(mine):
            free = np.where(taken, np.inf, distance[row])
            nearest = int(np.argmin(free))
            if free[nearest] < threshold:
                taken[nearest] = True
                tp[rank[prediction]] = True
    return order, tp


def precision_at_recalls(tp: np.ndarray, num_gt: int) -> np.ndarray:
    """(101,) precision at recall 0, 0.01, ..., 1 (``np.interp``, 0 beyond the last recall)."""
    tp = np.asarray(tp)
    if tp.ndim != 1 or (tp.size and tp.dtype != bool):
        raise TypeError(f"tp must be a 1-D bool array (one flag per prediction, in score order), got {tp.dtype} {tp.shape}")
    if isinstance(num_gt, bool) or not isinstance(num_gt, (int, np.integer)) or num_gt < 0 or int(tp.sum()) > num_gt:
        raise ValueError(f"num_gt must be an int >= the number of true positives ({int(tp.sum())}), got {num_gt!r}")
    if num_gt == 0 or len(tp) == 0 or not tp.any():
        return np.zeros(len(RECALLS))
    true_positives = np.cumsum(tp)
    false_positives = np.cumsum(~tp)
    precision = true_positives / (true_positives + false_positives)
    recall = true_positives / num_gt
    return np.interp(RECALLS, recall, precision, right=0)


def average_precision(precision: np.ndarray, min_recall: float = 0.1, min_precision: float = 0.1) -> float:
    """The devkit's ``calc_ap`` on a (101,) precision curve."""
    if not (0 <= min_recall < 1 and 0 <= min_precision < 1):
        raise ValueError(f"min_recall and min_precision must be in [0, 1), got {min_recall}, {min_precision}")
    precision = np.asarray(precision)
    if precision.shape != RECALLS.shape or not np.isfinite(precision).all():
        raise ValueError(f"precision must be a finite (101,) curve (precision_at_recalls), got shape {precision.shape}")
    kept = np.asarray(precision, dtype=np.float64)[round(100 * min_recall) + 1:] - min_precision
    return float(np.mean(np.clip(kept, 0, None)) / (1 - min_precision))


def class_ap(gt_xy, gt_sample, pred_xy, pred_score, pred_sample, threshold: float, min_recall: float = 0.1,
             min_precision: float = 0.1) -> float:
    """AP of one class at one centre-distance threshold (metres); see the module docstring."""
    _, tp = match(gt_xy, gt_sample, pred_xy, pred_score, pred_sample, threshold)
    return average_precision(precision_at_recalls(tp, len(np.asarray(gt_xy))), min_recall, min_precision)


def mean_ap(gt: dict, predictions: dict, num_classes: int, thresholds=THRESHOLDS) -> dict:
    """Per-class AP (mean over thresholds) and mAP, from flat arrays.

    gt: {"xy" (G, 2), "label" (G,), "sample" (G,)}; predictions: {"xy" (P, 2), "score" (P,),
    "label" (P,), "sample" (P,)}. Returns {"per_class": (C,), "per_class_threshold": (C, T), "mAP": float}.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    for name, table, keys in (("gt", gt, ("xy", "label", "sample")), ("predictions", predictions,
                                                                       ("xy", "score", "label", "sample"))):
        if not isinstance(table, dict) or set(keys) - set(table):
            raise ValueError(f"{name} must be a dict with keys {keys}, got "
                             f"{sorted(table) if isinstance(table, dict) else type(table).__name__}")
    gt_label = _array("gt label", gt["label"], 1, int)
    pred_label = _array("predictions label", predictions["label"], 1, int)
    for name, labels in (("gt", gt_label), ("predictions", pred_label)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{name} labels must be in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    gt_xy, pred_xy = (np.asarray(t["xy"], dtype=float).reshape(-1, 2) if np.size(t["xy"]) == 0 else np.asarray(t["xy"])
                      for t in (gt, predictions))
    table = np.zeros((num_classes, len(thresholds)))
    for c in range(num_classes):
        g, p = gt_label == c, pred_label == c
        for t, threshold in enumerate(thresholds):
            table[c, t] = class_ap(gt_xy[g], np.asarray(gt["sample"])[g],
                                   pred_xy[p], np.asarray(predictions["score"])[p],
                                   np.asarray(predictions["sample"])[p], threshold)
    return {"per_class": table.mean(1), "per_class_threshold": table, "mAP": float(table.mean())}
