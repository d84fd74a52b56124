"""LOCE's memory-augmented feature sampling (MFS): per-class RoI-feature queues, replayed by ``1 / m_c``.

Feng et al., *Exploring Classification Equilibrium in Long-Tailed Object Detection*, ICCV 2021,
arXiv 2108.07507; official ``fcjian/LOCE`` ``mmdet/models/utils/mfs.py``.

Rare classes appear in few images, so few of their RoIs reach the classifier. MFS keeps, per
class, a FIFO queue of RoI features (the RoIAlign output before the box head's fcs) with their
box-regression targets, and every iteration appends a few of them to the sampled RoIs:

1. **fill**: every ground-truth box of the batch gives 16 jittered boxes (:func:`jittered_boxes`:
   each corner moves by ``±U(0, 1) · {w, h} / 6``, the 16 sign patterns of the four
   coordinates); their RoIAlign features (detached) and targets go into the class's queue
   (:meth:`FeatureMemory.enqueue`; at most ``queue_size`` = 80 per class, oldest overwritten);
2. **sample**: draw ``num_classes`` = 8 classes with replacement, ``p_c ∝ 1 / m_c`` (the mean
   classification score of :mod:`kit.det.equilibrium_loss`: the worse a class is classified,
   the more often it is replayed), and ``per_class`` = 4 features of each, uniformly from its
   queue (:meth:`FeatureMemory.sample`); a class whose queue is still empty gives nothing, as
   the official sampler skips it. 8 × 4 = 32 extra RoIs, loss weight 1.

The official sampler draws classes by inverse CDF with sorted uniforms; that is a multinomial
draw with replacement, which is what :func:`torch.multinomial` does here (the order of the
classes differs, their distribution does not). Features are stored detached: no gradient flows
into the memory (the official memory lives on the CPU).
"""
from __future__ import annotations

import torch

__all__ = ["SIGN_PATTERNS", "jittered_boxes", "sampling_probabilities", "FeatureMemory"]

# (16, 4): every sign pattern of (x1, y1, x2, y2), the official bbox_offset_matrix transposed
SIGN_PATTERNS = torch.tensor([[(-1.0) ** (1 + ((j >> (3 - i)) & 1)) for i in range(4)] for j in range(16)])


def _check_count(name: str, value, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def jittered_boxes(gt_boxes: torch.Tensor, image_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(M, 4) xyxy px -> (M, 16, 4): corner ``i`` of pattern ``j`` moves by ``sign[j, i] · U(0,1) · side / 6``, clipped.

    Clipped to [0, image_size - 1] as the official generator (``img_shape - 1``); a box that
    collapses keeps at least 1 px.
    """
    if not isinstance(gt_boxes, torch.Tensor) or gt_boxes.dim() != 2 or gt_boxes.shape[1] != 4:
        raise ValueError(f"gt_boxes must be (M, 4), got {tuple(getattr(gt_boxes, 'shape', ()))}")
    if not gt_boxes.is_floating_point() or not bool(torch.isfinite(gt_boxes).all()):
        raise ValueError("gt_boxes must be finite float xyxy pixels")
    _check_count("image_size", image_size, 2)
    boxes = gt_boxes.float()
    sides = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)                                     # (M, 4): w, h, w, h
    u = torch.rand(len(boxes), 16, 4, generator=generator).to(boxes.device)               # (M, 16, 4)
    moved = boxes[:, None] + SIGN_PATTERNS.to(boxes.device)[None] * u * sides[:, None] / 6  # (M, 16, 4)
    moved = moved.clamp(0, image_size - 1)
    moved[..., 2:] = torch.maximum(moved[..., 2:], moved[..., :2] + 1)
    return moved


def sampling_probabilities(mean_score_foreground: torch.Tensor) -> torch.Tensor:
    """(C,) ``m_c`` -> (C,) ``p_c ∝ 1 / (m_c + 1e-7)`` (the official ``10e-8``)."""
    if not isinstance(mean_score_foreground, torch.Tensor) or mean_score_foreground.dim() != 1:
        raise ValueError("mean_score_foreground must be a (C,) tensor (the classes' m_c, no background)")
    if not bool(torch.isfinite(mean_score_foreground).all()) or bool((mean_score_foreground < 0).any()):
        raise ValueError("mean scores must be finite and >= 0")
    inverse = 1.0 / (mean_score_foreground.double() + 1e-7)
    return (inverse / inverse.sum()).to(mean_score_foreground.dtype)


class FeatureMemory:
    """Per-class FIFO queues: features (C, Q, *feature_shape), box targets (C, Q, 4), fill counts (C,)."""

    def __init__(self, num_classes: int, feature_shape: tuple, queue_size: int = 80, device=None):
        _check_count("num_classes", num_classes, 1)
        _check_count("queue_size", queue_size, 1)
        feature_shape = tuple(feature_shape)
        if not all(isinstance(d, int) and d >= 1 for d in feature_shape):
            raise ValueError(f"feature_shape must be positive ints, got {feature_shape}")
        self.num_classes, self.queue_size, self.feature_shape = num_classes, queue_size, feature_shape
        self.features = torch.zeros(num_classes, queue_size, *feature_shape, device=device)
        self.box_targets = torch.zeros(num_classes, queue_size, 4, device=device)
        self.counts = torch.zeros(num_classes, dtype=torch.long)   # filled slots per class, <= Q
        self.pointers = torch.zeros(num_classes, dtype=torch.long)  # next slot to write per class

    def enqueue(self, features: torch.Tensor, labels: torch.Tensor, box_targets: torch.Tensor) -> None:
        """features (M, *feature_shape), labels (M,) in 0..C-1, box_targets (M, 4): FIFO per class.

        As the official ``enqueue_dequeue``: per class only its first ``queue_size`` new rows are
        kept, written from the class's pointer on, wrapping to slot 0.
        """
        if not isinstance(features, torch.Tensor) or tuple(features.shape[1:]) != self.feature_shape:
            raise ValueError(f"features must be (M, {', '.join(map(str, self.feature_shape))}), "
                             f"got {tuple(getattr(features, 'shape', ()))}")
        rows = features.shape[0]
        if not isinstance(labels, torch.Tensor) or labels.shape != (rows,) or labels.dtype != torch.long:
            raise ValueError(f"labels must be a ({rows},) long tensor of classes 0..C-1")
        if not isinstance(box_targets, torch.Tensor) or box_targets.shape != (rows, 4):
            raise ValueError(f"box_targets must be ({rows}, 4), got {tuple(getattr(box_targets, 'shape', ()))}")
        if rows == 0:
            return
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise ValueError(f"labels must lie in 0..{self.num_classes - 1}")
        if not bool(torch.isfinite(features).all()) or not bool(torch.isfinite(box_targets).all()):
            raise ValueError("features and box_targets must be finite")
        features = features.detach().to(self.features)
        box_targets = box_targets.detach().to(self.box_targets)
        for label in labels.unique().tolist():
            rows_of = torch.where(labels.to(features.device) == label)[0][:self.queue_size]  # (n,), n <= Q
            slots = (self.pointers[label] + torch.arange(len(rows_of))) % self.queue_size    # (n,) wrapping
            self.features[label, slots.to(features.device)] = features[rows_of]
            self.box_targets[label, slots.to(features.device)] = box_targets[rows_of]
            self.pointers[label] = (self.pointers[label] + len(rows_of)) % self.queue_size
            self.counts[label] = min(self.queue_size, int(self.counts[label]) + len(rows_of))

    def sample(self, class_probabilities: torch.Tensor, num_classes: int = 8, per_class: int = 4,
               generator: torch.Generator | None = None):
        """Draw ``num_classes`` classes by ``class_probabilities`` (C,), ``per_class`` features of each.

        -> features (K, *feature_shape), labels (K,) in 0..C-1, box_targets (K, 4), drawn classes
        (num_classes,); K = per_class x the drawn classes whose queue is not empty.
        """
        _check_count("num_classes", num_classes, 0)
        _check_count("per_class", per_class, 0)
        p = class_probabilities
        if not isinstance(p, torch.Tensor) or p.shape != (self.num_classes,):
            raise ValueError(f"class_probabilities must be ({self.num_classes},)")
        if not bool(torch.isfinite(p).all()) or bool((p < 0).any()) or not float(p.sum()) > 0:
            raise ValueError("class_probabilities must be finite, >= 0 and not all 0")
        drawn = (torch.multinomial(p.double().cpu(), num_classes, replacement=True, generator=generator)
                 if num_classes else torch.zeros(0, dtype=torch.long))                       # (num_classes,)
        kept = drawn[self.counts[drawn] > 0]                                                  # non-empty queues only
        u = torch.rand(len(kept), per_class, generator=generator)                              # (k, per_class)
        slots = (u * self.counts[kept, None]).long().clamp(max=self.queue_size - 1)           # uniform in the filled slots
        classes = kept[:, None].expand(-1, per_class).reshape(-1)                             # (K,)
        slots = slots.reshape(-1)
        device = self.features.device
        return (self.features[classes.to(device), slots.to(device)], classes.to(device),
                self.box_targets[classes.to(device), slots.to(device)], drawn)

    def fill(self) -> torch.Tensor:
        """(C,) fraction of each queue that is filled."""
        return self.counts.float() / self.queue_size

