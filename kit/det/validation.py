"""Checks on the ground truth and the probabilities that the detection losses and assigners take.

Wrong ground truth rarely crashes: an inverted box, an ``xywh`` box read as ``xyxy`` or a NaN
box simply gets no positive prior, and the loss trains on background. So every assigner and
every loss entry point of :mod:`kit.det` calls the helpers here first:

* :func:`check_gt_boxes` — one image's boxes (M, 4) (and labels (M,)): finite, ``x2 >= x1`` and
  ``y2 >= y1``, the dtype and device of the tensor they are compared with, labels integers in
  ``[0, C)``. An image with no object, shape (0, 4), is legitimate.
* :func:`check_gt` — the per-image lists of a batch: one list per image, then the same checks
  on all images at once (one concatenation and one reduction for the batch).
* :func:`check_probs` — inputs that must be probabilities lie in [0, 1] (logits passed by
  mistake) and are finite (a diverging run: :class:`FloatingPointError`, as ``kit.train``).

Each check costs a few reductions on the whole tensor; the error message (which box, which
image) is only built once something is wrong. Float64 ground truth is refused, not cast: the
kit's predictions are float32, and a silent cast would hide that the data pipeline differs.
"""
from __future__ import annotations

import torch

__all__ = ["check_shape", "check_gt_boxes", "check_gt", "check_probs"]


def check_shape(name: str, tensor: torch.Tensor, shape: tuple) -> None:
    """Shape check: ``shape`` holds ints (exact) and None (any), e.g. ``(None, 4)``."""
    ok = tensor.dim() == len(shape) and all(s is None or s == t for s, t in zip(shape, tensor.shape))
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(tensor.shape)}")


_RULE = "boxes must be xyxy pixels with x2 >= x1 and y2 >= y1"


def _check_dtype_device(name: str, tensor: torch.Tensor, like: torch.Tensor | None, dtype=None) -> None:
    """``tensor`` is a floating tensor of ``dtype`` (default ``like.dtype``) on ``like``'s device."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    want = dtype if dtype is not None else (like.dtype if like is not None else None)
    if want is not None and tensor.dtype != want:
        raise TypeError(f"{name} has dtype {tensor.dtype}; expected {want}, the predictions' dtype "
                        f"(convert the ground truth with .to({want}), it is not cast silently)")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
    if like is not None and tensor.device != like.device:
        raise ValueError(f"{name} is on {tensor.device} but the predictions are on {like.device}")


def _check_labels(name: str, labels: torch.Tensor, num_boxes: int, like: torch.Tensor | None) -> None:
    """Labels (M,) of integer dtype on ``like``'s device; the range is checked by the callers."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of class indices, got {labels.dtype}")
    if labels.shape != (num_boxes,):
        raise ValueError(f"{name} must have shape (M,) = ({num_boxes},), one label per box, "
                         f"got {tuple(labels.shape)}")
    if like is not None and labels.device != like.device:
        raise ValueError(f"{name} is on {labels.device} but the predictions are on {like.device}")


def _label_range_error(name: str, labels: torch.Tensor, num_classes: int | None) -> ValueError | None:
    """The error for labels outside ``[0, C)`` (``[0, inf)`` without C), or None; two reductions (min, max)."""
    if labels.numel() == 0:
        return None
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or (num_classes is not None and high >= num_classes):
        allowed = f"[0, {num_classes})" if num_classes is not None else "[0, C)"
        return ValueError(f"{name} must lie in {allowed}, got min {low} max {high}")
    return None


def _bad_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """(M,) bool: a box with a non-finite coordinate, or with x2 < x1 or y2 < y1."""
    ordered = (boxes[:, 2:] >= boxes[:, :2]).all(dim=1)  # False for NaN too
    return ~(torch.isfinite(boxes).all(dim=1) & ordered)


def _box_error(name: str, boxes: torch.Tensor) -> ValueError:
    """The message for the bad boxes of one image (built only on the error path)."""
    non_finite = ~torch.isfinite(boxes).all(dim=1)  # (M,)
    if non_finite.any():
        bad, what = non_finite, "non-finite coordinates"
    else:
        bad, what = ~(boxes[:, 2:] >= boxes[:, :2]).all(dim=1), "x2 < x1 or y2 < y1 (inverted, or xywh passed as xyxy?)"
    return ValueError(f"{name} has {int(bad.sum())} boxes with {what} (first: {boxes[bad][0].tolist()}); "
                      f"{_RULE}, all finite")


def check_gt_boxes(boxes: torch.Tensor, labels: torch.Tensor | None = None, num_classes: int | None = None,
                   like: torch.Tensor | None = None, name: str = "gt_boxes", dtype=None) -> None:
    """Validate one image's ground truth: boxes (M, 4) xyxy, optionally labels (M,) in [0, C).

    like: a tensor the boxes are compared with (anchors, predicted boxes); the boxes must have
    its dtype (or ``dtype`` when given) and device. Raises TypeError for a wrong dtype and
    ValueError for wrong shapes or values. M = 0 is fine.
    """
    _check_dtype_device(name, boxes, like, dtype)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape (M, 4) as xyxy, got {tuple(boxes.shape)}")
    if labels is not None:
        label_name = name.replace("boxes", "labels") if "boxes" in name else "gt_labels"
        _check_labels(label_name, labels, boxes.shape[0], like)
        error = _label_range_error(label_name, labels, num_classes)
        if error is not None:
            raise error
    if _bad_boxes(boxes).any():
        raise _box_error(name, boxes)


def check_gt(gt_boxes, gt_labels, num_images: int, num_classes: int | None = None,
             like: torch.Tensor | None = None) -> None:
    """Validate a batch's ground truth: lists of (M_i, 4) boxes and (M_i,) labels, one per image.

    The values of all images are checked at once (one reduction); the message names the
    first bad image. ``like`` and ``num_classes`` as in :func:`check_gt_boxes`; ``gt_labels``
    None checks the boxes alone (for a rule that reads no labels, such as ATSS's assignment).
    """
    if num_images < 1:
        raise ValueError(f"the batch has {num_images} images; a loss needs at least one image")
    lists = (("gt_boxes", gt_boxes),) + ((("gt_labels", gt_labels),) if gt_labels is not None else ())
    for what, value in lists:
        if isinstance(value, torch.Tensor) or not hasattr(value, "__len__"):
            raise TypeError(f"{what} must be a list with one tensor per image, got {type(value).__name__}")
        if len(value) != num_images:
            raise ValueError(f"{what} has {len(value)} lists for a batch of {num_images} images; "
                             "give one (possibly empty) list per image")
    for i, boxes in enumerate(gt_boxes):  # per image: metadata only, no reductions
        _check_dtype_device(f"gt_boxes[{i}]", boxes, like)
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"gt_boxes[{i}] must have shape (M, 4) as xyxy, got {tuple(boxes.shape)}")
        if gt_labels is not None:
            _check_labels(f"gt_labels[{i}]", gt_labels[i], boxes.shape[0], like)
    all_boxes = torch.cat(list(gt_boxes))  # (sum M, 4)
    all_labels = torch.cat(list(gt_labels)) if gt_labels is not None else None  # (sum M,)
    if all_labels is not None and _label_range_error("gt_labels", all_labels, num_classes) is not None:
        for i, labels in enumerate(gt_labels):  # error path: find the image
            error = _label_range_error(f"gt_labels[{i}]", labels, num_classes)
            if error is not None:
                raise error
    if _bad_boxes(all_boxes).any():
        for i, boxes in enumerate(gt_boxes):  # error path: find the image
            if _bad_boxes(boxes).any():
                raise _box_error(f"gt_boxes[{i}]", boxes)


def check_probs(probs: torch.Tensor, name: str = "probs") -> None:
    """``probs`` must be probabilities: finite and in [0, 1]. One reduction when they are.

    Non-finite values raise :class:`FloatingPointError` (a diverging run); finite values
    outside [0, 1] raise ValueError (logits passed where probabilities are expected).
    """
    if probs.numel() == 0 or bool(((probs >= 0) & (probs <= 1)).all()):  # NaN fails both tests
        return
    if not torch.isfinite(probs).all():
        raise FloatingPointError(f"{name} has {int((~torch.isfinite(probs)).sum())} non-finite values; "
                                 "probabilities must be finite in [0, 1] (has the run diverged?)")
    raise ValueError(f"expected probabilities in [0, 1] for {name}; got values in "
                     f"[{float(probs.min()):.4g}, {float(probs.max()):.4g}] (logits passed by mistake?)")
