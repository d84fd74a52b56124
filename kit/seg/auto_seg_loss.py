"""Auto Seg-Loss (Li et al., ICLR 2021): metrics relaxed into losses by learned Bézier curves.

A segmentation metric is a formula over one-hot predictions ``y_hat`` and targets ``y`` that
uses only logical AND and OR. mIoU, for instance, is
``mean_c sum_i (y_hat_ic AND y_ic) / sum_i (y_hat_ic OR y_ic)``. Replace ``y_hat`` by the
softmax ``p`` and the logic by two learned curves ``g_I, g_U: [0, 1] -> [0, 1]``::

    AND(p, y) -> g_I(p) y            OR(p, y) -> g_U(p) + y - g_U(p) y

and ``1 - surrogate`` is a differentiable loss that equals ``1 - metric`` on one-hot input for
any curves through (0, 0) and (1, 1) (the truth table). The curves are searched (P36's PPO2
search, :mod:`kit.hpo.truncated_normal_ppo`), then the network is retrained with them.

The curves, as the official ``AutoSegLoss._bezier`` (``fundamentalvision/Auto-Seg-Loss``)
---------------------------------------------------------------------------------------
- A curve is a piecewise *quadratic* Bézier from (0, 0) to (1, 1). ``k`` pieces have ``2k - 1``
  free control points (``2 (2k - 1)`` numbers): for 2 pieces ``(0,0) -> c1 -> (x2, y2) -> c3 ->
  (1,1)``, the middle point joining the two pieces. mIoU uses 2-piece curves (2 curves, 12
  numbers); BF1 four 1-piece curves (8 numbers).
- Search parameters ``theta`` in (0, 1) become control points by the cumulative map
  ``ctrl_p = theta_p (1 - ctrl_{p-1}) + ctrl_{p-1}`` (both coordinates, point by point), so the
  points increase in x and y: the curve is monotone (:func:`control_points_from_theta`).
  ``AutoSegLoss`` takes the *converted* points; its retrain configs list them.
- ``x -> y``: in the piece whose x-range holds ``x`` (piece ``k`` covers ``(x_{k-1}, x_k]``),
  solve the quadratic ``x(t) = x`` for the Bézier parameter ``t``, then ``y = y(t)``. The
  official root ``(a - sqrt(a^2 + (1 - 2a) u)) / (2a - 1)`` (``u``, ``a`` the x of the point and
  of the middle control point, normalised to the piece) divides by ``2a - 1`` and special-cases
  ``a == 0.5`` only; here the same root is written ``u / (a + sqrt(a^2 + (1 - 2a) u))``, equal
  for every ``a`` and stable at and near 0.5. As the official code, ``x`` outside a piece is
  clamped to it before the root, so no NaN gradient leaks through the piece selection.

The surrogates, as ``forward_mIoU`` and ``forward_BF1``
---------------------------------------------------------
- **mIoU**: pixels labelled ``ignore_index`` leave both sums; the intersections and unions are
  summed over the whole batch; the mean runs over *all* C classes (a class absent from labels
  and predictions counts 0, as the official code; :func:`exact_miou_all_classes`).
- **BF1** (tolerance ``tol`` px, ``drop_bg=False``): a target edge pixel of class ``c`` is a
  pixel of ``c`` with a 3x3 neighbour of another label (min-pool, the image padded with 1, so the
  image border is no edge); the predicted edge is the relaxed ``p AND NOT erode(p)`` written with
  the four curves as ``OR(p, erode p) - AND(p, erode p)`` (``g_3``, ``g_4`` for the union,
  ``g_1``, ``g_2`` for the intersection); dilation is a ``(2 tol + 1)`` max-pool. Precision
  ``sum edge * dilate(T) / sum edge``, recall ``sum dilate(edge) * T / sum T``, F1 per class over
  the batch, the mean over classes with a target edge. **No ignore mask** (the official code has
  none): an ignored pixel is an all-zero target, so edges around ignored regions count.

Shapes: ``logits (N, C, H, W)``, ``labels (N, H, W)`` long in ``[0, C)`` or ``ignore_index``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kit.seg.seg_losses import IGNORE_INDEX, check_logits_and_labels

METRICS = ("mIoU", "BF1")
PIECES = {"mIoU": 2, "BF1": 1}   # Bézier pieces per curve (official ASL_configs ``num_pieces``)
CURVES = {"mIoU": 2, "BF1": 4}   # curves per metric (g_I, g_U; BF1: two per AND and per OR)

# The searched control points of the official retrain configs (ASL_configs/retrain/), to 3
# digits. mIoU (miou_bezier_10k.py as updated on 2021-05-07, commit e2349db; the first release
# had other values): g_I then g_U, each (x1, y1, x2, y2, x3, y3).
OFFICIAL_MIOU_CONTROL_POINTS = (5.7e-4, 0.644, 0.339, 0.706, 0.625, 0.780,
                                0.690, 0.013, 0.834, 0.962, 0.943, 0.980)
# BF1 (bf1_bezier_10k.py): four one-piece curves, each one middle point (x1, y1): g_1, g_2 of
# the intersection, g_3, g_4 of the union.
OFFICIAL_BF1_CONTROL_POINTS = (0.811, 0.853, 0.172, 0.032, 0.210, 0.449, 0.078, 0.875)


def parameters_per_curve(metric: str) -> int:
    """Numbers per curve: 2 per free control point, ``2 pieces - 1`` points."""
    return 2 * (2 * PIECES[check_metric(metric)] - 1)


def num_parameters(metric: str) -> int:
    """Length of a metric's theta / control-point vector (mIoU 12, BF1 8)."""
    return CURVES[check_metric(metric)] * parameters_per_curve(metric)


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


def control_points_from_theta(theta: torch.Tensor, metric: str) -> torch.Tensor:
    """Search parameters -> control points, curve by curve: ``ctrl_p = theta_p (1 - ctrl_{p-1})
    + ctrl_{p-1}`` for the points after the first. ``theta (..., D)`` in [0, 1] -> same shape."""
    theta = torch.as_tensor(theta, dtype=torch.get_default_dtype()) if not torch.is_tensor(theta) else theta
    size = num_parameters(metric)
    if theta.shape[-1:] != (size,):
        raise ValueError(f"theta for {metric} must end in a dimension of {size}, got shape {tuple(theta.shape)}")
    if bool(((theta < 0) | (theta > 1)).any()) or not bool(torch.isfinite(theta).all()):
        raise ValueError("theta must lie in [0, 1] (the search samples a normal truncated to [0, 1])")
    per_curve = parameters_per_curve(metric)
    curves = list(theta.reshape(*theta.shape[:-1], -1, per_curve // 2, 2).unbind(-2))  # points (..., K, 2)
    for p in range(1, len(curves)):
        curves[p] = curves[p] * (1 - curves[p - 1]) + curves[p - 1]
    return torch.stack(curves, dim=-2).reshape(theta.shape)


def check_control_points(control_points: torch.Tensor, metric: str) -> torch.Tensor:
    """Control points (D,) of a metric: finite, in [0, 1], each curve's x strictly increasing
    from 0 to 1 (a piece of zero width has no root) and y non-decreasing (monotone curves)."""
    control_points = torch.as_tensor(control_points, dtype=torch.get_default_dtype())
    size = num_parameters(metric)
    if control_points.shape != (size,):
        raise ValueError(f"control points for {metric} must have shape ({size},), got {tuple(control_points.shape)}")
    for k, curve in enumerate(control_points.reshape(CURVES[metric], -1, 2)):
        points = torch.cat([curve.new_zeros(1, 2), curve, curve.new_ones(1, 2)])  # with the ends (0,0), (1,1)
        if not (bool((points[1:, 0] > points[:-1, 0]).all()) and bool((points[1:, 1] >= points[:-1, 1]).all())):
            raise ValueError(f"curve {k} of {metric}: control points {curve.tolist()} must increase in x strictly "
                             "and in y, inside (0, 1) (control_points_from_theta makes such points)")
    return control_points


def quadratic_bezier_root(u: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The Bézier parameter t in [0, 1] with ``x(t) = u`` for the normalised piece
    ``x(t) = 2 a t (1 - t) + t^2`` (ends 0 and 1, middle control point ``a`` in (0, 1)).

    The root of ``(1 - 2a) t^2 + 2 a t - u = 0`` that lies in [0, 1], in its stable form."""
    return u / (a + torch.sqrt(a * a + (1 - 2 * a) * u))


def bezier_curve(x: torch.Tensor, control_points: torch.Tensor) -> torch.Tensor:
    """Evaluate one piecewise quadratic Bézier curve from (0, 0) to (1, 1) at ``x`` in [0, 1].

    ``control_points (2 (2k - 1),)``: the k pieces' middle points and the joints, as (x, y)
    pairs in order -> ``y`` of the shape of ``x``."""
    points = torch.cat([control_points.new_zeros(2), control_points, control_points.new_ones(2)]).reshape(-1, 2)
    y = torch.zeros_like(x)
    for k in range(0, len(points) - 1, 2):                  # piece k/2: points k (start), k+1 (middle), k+2 (end)
        (x0, y0), (x1, y1), (x2, y2) = points[k], points[k + 1], points[k + 2]
        in_piece = (x <= x2) if k == 0 else ((x > x0) & (x <= x2))
        u = (x.clamp(x0, x2) - x0) / (x2 - x0)             # x clamped into the piece, normalised
        t = quadratic_bezier_root(u, (x1 - x0) / (x2 - x0))
        y = torch.where(in_piece, (1 - t) ** 2 * y0 + 2 * t * (1 - t) * y1 + t ** 2 * y2, y)
    return y


def one_hot_with_ignore(labels: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX):
    """``labels (N, H, W)`` -> one-hot ``(N, C, H, W)`` float (all zero at ignored pixels) and the
    valid mask ``(N, 1, H, W)``."""
    valid = (labels != ignore_index).unsqueeze(1)
    one_hot = F.one_hot(labels.where(labels != ignore_index, 0), num_classes).permute(0, 3, 1, 2)
    return one_hot.to(torch.get_default_dtype()) * valid, valid.to(torch.get_default_dtype())


def miou_surrogate(probabilities: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                   control_points: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Relaxed mIoU: ``probabilities``, ``target`` (N, C, H, W), ``valid`` (N, 1, H, W) -> scalar."""
    g_intersection, g_union = control_points.to(probabilities).chunk(2)
    soft_and = bezier_curve(probabilities, g_intersection) * target     # (N, C, H, W)
    relaxed = bezier_curve(probabilities, g_union)
    soft_or = relaxed + target - relaxed * target
    intersection = (soft_and * valid).sum(dim=(0, 2, 3))               # (C,)
    union = (soft_or * valid).sum(dim=(0, 2, 3)) + eps
    return (intersection / union).mean()


def erode(maps: torch.Tensor) -> torch.Tensor:
    """3x3 min-pool of (N, C, H, W) maps, the image padded with 1 (the border erodes nothing)."""
    return -F.max_pool2d(-F.pad(maps, (1, 1, 1, 1), value=1.0), 3, stride=1)


def dilate(maps: torch.Tensor, tolerance: int) -> torch.Tensor:
    """(2 tolerance + 1) square max-pool of (N, C, H, W) maps (tolerance 0: unchanged)."""
    return F.max_pool2d(maps, 2 * tolerance + 1, stride=1, padding=tolerance) if tolerance > 0 else maps


def bf1_surrogate(probabilities: torch.Tensor, target: torch.Tensor, control_points: torch.Tensor,
                  tolerance: int = 5, eps: float = 1e-8) -> torch.Tensor:
    """Relaxed boundary F1: ``probabilities``, ``target`` (N, C, H, W) -> scalar (no ignore mask)."""
    g1, g2, g3, g4 = control_points.to(probabilities).chunk(4)
    target_edge = (erode(target) != target).to(probabilities.dtype)      # (N, C, H, W)
    eroded = erode(probabilities)
    soft_and = bezier_curve(probabilities, g1) * bezier_curve(eroded, g2)
    union_p, union_e = bezier_curve(probabilities, g3), bezier_curve(eroded, g4)
    predicted_edge = union_p + union_e - union_p * union_e - soft_and
    precision = (predicted_edge * dilate(target_edge, tolerance)).sum(dim=(0, 2, 3)) / (
        predicted_edge.sum(dim=(0, 2, 3)) + eps)                         # (C,)
    recall = (dilate(predicted_edge, tolerance) * target_edge).sum(dim=(0, 2, 3)) / (
        target_edge.sum(dim=(0, 2, 3)) + eps)
    f1 = 2 * precision * recall / (precision + recall + eps)
    return f1[target_edge.sum(dim=(0, 2, 3)) > 0].mean()


def auto_seg_loss(logits: torch.Tensor, labels: torch.Tensor, control_points, metric: str = "mIoU",
                  tolerance: int = 5, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``1 - surrogate(softmax(logits))`` for ``metric`` with the given (converted) control
    points; ``tolerance`` is BF1's edge tolerance in pixels. Scalar in [0, 1]."""
    check_logits_and_labels(logits, labels, ignore_index)
    control_points = check_control_points(control_points, metric)
    if metric == "BF1" and (not isinstance(tolerance, int) or tolerance < 0):
        raise ValueError(f"tolerance must be an int >= 0 (pixels), got {tolerance!r}")
    target, valid = one_hot_with_ignore(labels, logits.shape[1], ignore_index)
    probabilities = logits.softmax(dim=1)
    if metric == "mIoU":
        return 1 - miou_surrogate(probabilities, target.to(logits), valid.to(logits), control_points)
    return 1 - bf1_surrogate(probabilities, target.to(logits), control_points, tolerance)


def exact_miou_all_classes(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int,
                           ignore_index: int = IGNORE_INDEX) -> float:
    """Hard mIoU as the official surrogate averages it: over all ``num_classes``, a class absent
    from prediction and labels counting 0 (``kit.eval.seg_metrics.miou_ignoring`` skips such a
    class instead). ``predicted``, ``labels`` (N, H, W) long."""
    valid = labels != ignore_index
    ious = []
    for c in range(num_classes):
        hit, truth = (predicted == c) & valid, (labels == c)
        union = int((hit | truth).sum())
        ious.append(int((hit & truth).sum()) / union if union else 0.0)
    return sum(ious) / num_classes
