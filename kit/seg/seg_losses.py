"""Hand-crafted segmentation losses that target a metric: Lovász-softmax and soft Dice.

Auto Seg-Loss (P36) compares its searched surrogates with these two, the best-known losses
that aim at a region metric instead of per-pixel accuracy.

- **Lovász-softmax** (Berman, Rannen Triki & Blaschko, CVPR 2018). The Jaccard loss of class
  ``c`` is a set function of the mispredicted pixels ``M``: ``Delta(M) = |M| / |{y = c} u M|``;
  it is submodular, so its Lovász extension is its tight convex closure and can be evaluated on
  continuous errors ``m_i = |[y_i = c] - p_ic|``: sort the errors in decreasing order and weight
  each by how much ``Delta`` grows when its pixel joins the set (:func:`lovasz_grad`). On hard
  one-hot predictions the errors are 0/1 and the loss is exactly ``1 - IoU_c``. As the authors'
  ``lovasz_softmax`` (defaults ``classes='present'``, ``per_image=False``): the pixels of the
  whole batch together, pixels labelled ``ignore_index`` dropped, the mean over the classes
  present in the labels.
- **Soft Dice** (Milletari, Navab & Ahmadi, 3DV 2016; the form of mmsegmentation's
  ``DiceLoss``: ``exponent=2``, ``smooth=1``): per image and class
  ``1 - (2 sum p y + 1) / (sum p^2 + sum y^2 + 1)``, the mean over classes and images.
  mmsegmentation one-hots ``clamp(label, 0, C - 1)``, so an ignored pixel counts as a target of
  the last class in the denominator; here ignored pixels are left out of every sum instead.

Shapes: ``logits (N, C, H, W)``, ``labels (N, H, W)`` int64 in ``[0, C)`` or ``ignore_index``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255  # kit.data.seg_scenes.IGNORE_INDEX


def check_logits_and_labels(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> None:
    """Raise naming what is wrong with a (logits, labels) pair (the wording of
    :func:`kit.seg.models.segmentation_loss`)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4 or not logits.is_floating_point():
        raise ValueError(f"logits must be a float (B, L, H, W) tensor, got "
                         f"{getattr(logits, 'dtype', type(logits).__name__)} {tuple(getattr(logits, 'shape', ()))}")
    if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"labels must be (B, H, W) of the logits' B, H, W {(logits.shape[0], *logits.shape[2:])}, "
                         f"got {tuple(getattr(labels, 'shape', ()))}")
    if labels.dtype != torch.long:
        raise TypeError(f"labels must be long class ids (SegScenes.batch gives them), got {labels.dtype}")
    non_finite = int((~torch.isfinite(logits)).sum())
    if non_finite:
        raise ValueError(f"logits has {non_finite} non-finite values (NaN or inf); a loss on them would be NaN")
    valid = labels != ignore_index  # (B, H, W)
    if valid.any() and (labels[valid].min() < 0 or labels[valid].max() >= logits.shape[1]):
        raise ValueError(f"labels must be label ids in [0, {logits.shape[1]}) or {ignore_index} (ignored), "
                         f"got values in [{int(labels[valid].min())}, {int(labels[valid].max())}]")


def lovasz_grad(sorted_foreground: torch.Tensor) -> torch.Tensor:
    """The Lovász extension's weights for errors sorted in decreasing order.

    ``sorted_foreground (P,)``: 1 where the pixel belongs to the class, in the errors' order.
    Weight ``i`` = ``Delta(first i + 1 pixels) - Delta(first i pixels)`` with
    ``Delta(M) = 1 - |fg minus M| / |fg u M|`` -> ``(P,)``, summing to ``Delta(all)``.
    """
    foreground_total = sorted_foreground.sum()
    intersection = foreground_total - sorted_foreground.cumsum(0)   # fg pixels not yet counted wrong
    union = foreground_total + (1 - sorted_foreground).cumsum(0)    # fg plus the background counted wrong
    jaccard_loss = 1 - intersection / union                          # Delta of each prefix
    return torch.cat([jaccard_loss[:1], jaccard_loss[1:] - jaccard_loss[:-1]])


def lovasz_softmax(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Lovász-softmax loss (scalar): mean over the classes present in ``labels`` of the Lovász
    extension of each class's Jaccard loss at the softmax errors, over all valid pixels.

    A batch with no valid pixel gives 0 (with zero gradient)."""
    check_logits_and_labels(logits, labels, ignore_index)
    probabilities = logits.softmax(dim=1).permute(0, 2, 3, 1).reshape(-1, logits.shape[1])  # (P, C)
    flat_labels = labels.reshape(-1)
    valid = flat_labels != ignore_index
    probabilities, flat_labels = probabilities[valid], flat_labels[valid]
    losses = []
    for c in flat_labels.unique().tolist():
        foreground = (flat_labels == c).to(probabilities.dtype)         # (P,)
        errors = (foreground - probabilities[:, c]).abs()               # (P,)
        errors_sorted, order = errors.sort(descending=True)
        losses.append(errors_sorted @ lovasz_grad(foreground[order]))
    if not losses:
        return logits.sum() * 0
    return torch.stack(losses).mean()


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX,
              smooth: float = 1.0, exponent: float = 2.0) -> torch.Tensor:
    """Soft Dice loss (scalar): per image and class ``1 - (2 sum p y + smooth) /
    (sum p^exponent + sum y^exponent + smooth)`` over valid pixels, mean over classes and images."""
    check_logits_and_labels(logits, labels, ignore_index)
    if smooth <= 0 or exponent <= 0:
        raise ValueError(f"smooth and exponent must be > 0, got smooth={smooth}, exponent={exponent}")
    num_classes = logits.shape[1]
    valid = (labels != ignore_index).unsqueeze(1).to(logits.dtype)                  # (N, 1, H, W)
    target = F.one_hot(labels.where(labels != ignore_index, 0), num_classes)        # (N, H, W, C)
    target = target.permute(0, 3, 1, 2).to(logits.dtype) * valid                    # (N, C, H, W)
    probabilities = logits.softmax(dim=1) * valid
    overlap = 2 * (probabilities * target).sum(dim=(2, 3)) + smooth                 # (N, C)
    mass = (probabilities.pow(exponent) + target.pow(exponent)).sum(dim=(2, 3)) + smooth
    return (1 - overlap / mass).mean()
