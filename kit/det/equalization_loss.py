"""Equalization loss (Tan et al., CVPR 2020, arXiv 2003.05176): stop discouraging the rare classes.

With a sigmoid classifier every foreground RoI of class ``a`` is a *negative* sample for every
other class ``j``. A frequent class sends thousands of such discouraging gradients to a rare
class for each positive the rare class ever sees, so the rare class learns to say "no". EQL
drops them. For RoI ``i`` and class ``j``, with ``y_ij`` its binary target,

.. math::

    \\mathcal L_{EQL} = -\\frac{1}{N} \\sum_{i=1}^{N} \\sum_{j=1}^{C} w_{ij}
        \\big[y_{ij} \\log \\sigma(z_{ij}) + (1 - y_{ij}) \\log(1 - \\sigma(z_{ij}))\\big],
    \\qquad w_{ij} = 1 - E(r_i)\\, T_\\lambda(f_j)\\, (1 - y_{ij})

- ``E(r) = 1`` iff RoI ``r`` is foreground: background RoIs keep every negative gradient (the
  classifier must still learn what is *not* an object);
- ``T_lambda(f) = 1[f < lambda]``, ``f_j`` the *image-count* frequency of class ``j`` (training
  images containing it / training images; not the instance count);
- ``N`` is the number of RoIs (not the number of non-zero weights).

``lambda = 0`` is plain sigmoid cross-entropy. The official code (``tztztztztz/eql.detectron2``,
``EQLFastRCNNOutputs.eql_loss``) sets lambda = 1.76e-3 on LVIS v0.5, about the common/frequent
boundary (100 of 57k images); copied to a 2k-image set that suppresses nothing, so the pages set
lambda from the split's own group boundary. Labels follow the kit's two-stage convention: 0 is
background, ``c + 1`` is class ``c`` (the official code puts background last, at index C).

:func:`class_gradients` gives what EQL's Figure 1 plots: per class, the accumulated magnitudes
of the positive and negative gradients on its logit, ``|dL/dz| = w |sigma(z) - y|`` (as
``eqlv2.EQLv2.collect_grad``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["check_roi_logits", "binary_targets", "eql_weights", "equalization_loss", "sigmoid_cross_entropy",
           "softmax_cross_entropy", "class_gradients", "suppression_threshold"]


def check_roi_logits(logits: torch.Tensor, labels: torch.Tensor, columns: int | None = None) -> None:
    """logits (R, K) float, finite; labels (R,) long in 0..C (0 background). ``columns``: the K wanted."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a float (R, C) tensor, got "
                         f"{getattr(logits, 'dtype', type(logits).__name__)} {tuple(getattr(logits, 'shape', ()))}")
    if columns is not None and logits.shape[1] != columns:
        raise ValueError(f"logits must have {columns} columns here, got {logits.shape[1]}")
    if not isinstance(labels, torch.Tensor) or labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must be ({logits.shape[0]},), one per RoI, got {tuple(getattr(labels, 'shape', ()))}")
    if labels.dtype != torch.long:
        raise TypeError(f"labels must be long (0 background, c + 1 class c), got {labels.dtype}")
    non_finite = int((~torch.isfinite(logits)).sum())
    if non_finite:
        raise ValueError(f"logits has {non_finite} non-finite values (NaN or inf)")


def binary_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """labels (R,) in 0..C (0 background) -> y (R, C) float: one 1 at column c for class c + 1, none for background."""
    expanded = F.one_hot(labels, num_classes + 1).float()  # (R, C + 1): expand with the background column...
    return expanded[:, 1:]                                  # ...then drop it (the official "expand_label")


def _check_frequency(image_frequency: torch.Tensor, num_classes: int) -> torch.Tensor:
    frequency = torch.as_tensor(image_frequency, dtype=torch.float32)
    if frequency.shape != (num_classes,):
        raise ValueError(f"image_frequency must be ({num_classes},), one per class, got {tuple(frequency.shape)}")
    if not bool(torch.isfinite(frequency).all()) or bool(((frequency < 0) | (frequency > 1)).any()):
        raise ValueError(f"image_frequency must be fractions of the training images in [0, 1], got "
                         f"values in [{frequency.min():.3g}, {frequency.max():.3g}]")
    return frequency


def suppression_threshold(image_frequency, lam: float) -> torch.Tensor:
    """T_lambda(f): (C,) float, 1 for the classes whose negative gradients EQL drops (f < lambda)."""
    if not 0 <= lam <= 1:
        raise ValueError(f"lam (lambda) must be a frequency in [0, 1], got {lam}")
    frequency = torch.as_tensor(image_frequency, dtype=torch.float32)
    return (frequency < lam).float()


def eql_weights(labels: torch.Tensor, image_frequency, lam: float) -> torch.Tensor:
    """w (R, C) = 1 - E(r) T_lambda(f_j) (1 - y_ij): 0 where a foreground RoI would discourage a rare class."""
    frequency = _check_frequency(image_frequency, len(image_frequency))
    targets = binary_targets(labels, len(frequency))                    # (R, C)
    foreground = (labels > 0).float()[:, None]                          # (R, 1): E(r)
    suppressed = suppression_threshold(frequency, lam).to(labels.device)[None, :]  # (1, C): T_lambda(f_j)
    return 1 - foreground * suppressed * (1 - targets)                  # (R, C)


def equalization_loss(logits: torch.Tensor, labels: torch.Tensor, image_frequency, lam: float) -> torch.Tensor:
    """The EQL of the module docstring: logits (R, C) (no background column), labels (R,) in 0..C -> scalar."""
    num_classes = len(image_frequency)
    check_roi_logits(logits, labels, num_classes)
    if labels.numel() and (labels.min() < 0 or labels.max() > num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}] (0 background), got {labels.min()}..{labels.max()}")
    if logits.shape[0] == 0:
        return logits.sum() * 0  # no RoIs: a zero that keeps the graph
    weights = eql_weights(labels, image_frequency, lam).to(logits.dtype)                 # (R, C)
    per_entry = F.binary_cross_entropy_with_logits(logits, binary_targets(labels, num_classes).to(logits.dtype),
                                                   reduction="none")                    # (R, C)
    return (weights * per_entry).sum() / logits.shape[0]                                 # divided by N = R


def sigmoid_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The sigmoid baseline: EQL with lambda = 0 (every weight 1). logits (R, C), labels (R,) in 0..C."""
    num_classes = logits.shape[1] if isinstance(logits, torch.Tensor) and logits.dim() == 2 else 0
    return equalization_loss(logits, labels, torch.zeros(num_classes), 0.0)


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The softmax baseline (Mask R-CNN's): cross-entropy over C + 1 columns, column 0 background."""
    check_roi_logits(logits, labels)
    if labels.numel() and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"labels must lie in [0, {logits.shape[1] - 1}] (0 background), got "
                         f"{labels.min()}..{labels.max()}")
    return F.cross_entropy(logits, labels) if logits.shape[0] else logits.sum() * 0


def class_gradients(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, the summed positive and negative gradient magnitudes on its sigmoid logit.

    logits (R, C), labels (R,) in 0..C, weights (R, C) (EQL's w; default all ones) ->
    (positive (C,), negative (C,)), with |dL/dz_ij| = w_ij |sigma(z_ij) - y_ij| before the 1/N.
    """
    check_roi_logits(logits, labels)
    targets = binary_targets(labels, logits.shape[1])                   # (R, C)
    magnitude = (logits.detach().sigmoid() - targets).abs()             # (R, C)
    if weights is not None:
        if weights.shape != magnitude.shape:
            raise ValueError(f"weights must be {tuple(magnitude.shape)} like the logits, got {tuple(weights.shape)}")
        magnitude = magnitude * weights
    return (magnitude * targets).sum(0), (magnitude * (1 - targets)).sum(0)
