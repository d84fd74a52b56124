"""LOCE's classification equilibrium: the mean classification score and the equilibrium loss.

Feng, Zhong, Huang. *Exploring Classification Equilibrium in Long-Tailed Object
Detection.* ICCV 2021, arXiv 2108.07507; official code ``fcjian/LOCE`` (mmdet 2.8).

A detector trained on a long tail classifies the frequent classes well and the rare ones
badly. LOCE measures that *during training* instead of counting instances:

* **mean classification score** ``m_c``: for every object of class ``c`` that has at least
  one positive RoI in the batch, ``s̄`` = the mean softmax probability of class ``c`` over
  its positive RoIs (detached). With ``n_c`` such objects in the batch,

  .. math:: m_c \\leftarrow \\alpha^{n_c} m_c + (1 - \\alpha^{n_c})\\,\\mathrm{mean}(\\bar s),

  which is ``n_c`` single-object EMA steps of rate ``alpha`` with the batch mean
  (:meth:`MeanScore.update`). ``alpha = 0.9``, every ``m_c`` starts at 0.01; background is
  not tracked and is held at 0.01 after every update.

* **equilibrium loss** (EBL): a softmax cross-entropy whose class terms are weighted by ``m``,

  .. math:: \\mathcal L = -\\log\\frac{m_y e^{z_y}}{\\sum_k m_k e^{z_k}}
            = -\\log\\frac{e^{z_y}}{\\sum_k e^{z_k + \\log(m_k / m_y)}},

  a margin ``log(m_k / m_y)`` between the target ``y`` and every other class ``k`` (background
  included): a poorly classified class facing well classified ones gets a large margin. It is
  plain cross-entropy on ``z + log m`` (:func:`equilibrium_loss`), so its gradient is
  ``softmax(z + log m) - onehot(y)``. Training only; inference is the plain softmax of ``z``.

Column convention. The official head puts background *last* (mmdet 2: logits ``(N, C + 1)``,
``mean_score[C]`` = background). The kit's region detector puts background in column 0 and
class ``c`` in column ``c + 1``; here ``m`` follows the kit: ``m[0]`` is background, ``m[c + 1]``
is class ``c``. The two are the same loss after the permutation ``kit = roll(official, 1)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["MeanScore", "instance_mean_scores", "equilibrium_loss", "margin_matrix"]


def _check_fraction(name: str, value, low_open: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number in (0, 1), got {value!r}")
    if not (0 < value < 1 if low_open else 0 <= value < 1):
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    return float(value)


def _check_mean_score(mean_score: torch.Tensor, columns: int) -> None:
    if not isinstance(mean_score, torch.Tensor) or mean_score.shape != (columns,):
        raise ValueError(f"mean_score must be a ({columns},) tensor (column 0 background), "
                         f"got {tuple(getattr(mean_score, 'shape', ()))}")
    if not mean_score.is_floating_point():
        raise TypeError(f"mean_score must be float, got {mean_score.dtype}")
    if not bool(torch.isfinite(mean_score).all()) or not bool((mean_score > 0).all()):
        raise ValueError("mean_score must be finite and > 0 (it enters as log m)")


def equilibrium_loss(logits: torch.Tensor, labels: torch.Tensor, mean_score: torch.Tensor,
                     weight: torch.Tensor | None = None) -> torch.Tensor:
    """EBL, mean over the R RoIs (the official ``reduction='mean'``, avg_factor = R).

    logits (R, C + 1), column 0 background; labels (R,) long in 0..C; mean_score (C + 1,) > 0,
    ``m[0]`` background; weight (R,) optional per-RoI weights (mean of ``w * loss``, as mmdet's
    ``weight_reduce_loss`` without avg_factor). ``m`` is treated as a constant (no gradient).
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (R, C + 1) with C >= 1, got {tuple(getattr(logits, 'shape', ()))}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be float, got {logits.dtype}")
    if not isinstance(labels, torch.Tensor) or labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must be ({logits.shape[0]},), got {tuple(getattr(labels, 'shape', ()))}")
    if labels.dtype != torch.long:
        raise TypeError(f"labels must be long (0 background, c + 1 class c), got {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
        raise ValueError(f"labels must lie in 0..{logits.shape[1] - 1}, got {int(labels.min())}..{int(labels.max())}")
    _check_mean_score(mean_score, logits.shape[1])
    non_finite = int((~torch.isfinite(logits)).sum())
    if non_finite:
        raise ValueError(f"logits has {non_finite} non-finite values (NaN or inf)")
    if logits.shape[0] == 0:
        return logits.sum() * 0.0  # no RoIs: zero loss, still attached to the graph
    # z + log m: the margin log(m_k / m_y) up to a per-row constant that softmax ignores
    shifted = logits + mean_score.detach().to(logits).log()[None]                 # (R, C + 1)
    loss = F.cross_entropy(shifted, labels, reduction="none")                       # (R,), logsumexp-stable
    if weight is None:
        return loss.mean()
    if not isinstance(weight, torch.Tensor) or weight.shape != labels.shape or not bool(torch.isfinite(weight).all()):
        raise ValueError(f"weight must be a finite ({labels.shape[0]},) tensor")
    return (weight.to(loss) * loss).mean()


def margin_matrix(mean_score: torch.Tensor) -> torch.Tensor:
    """``delta[y, k] = log m_k - log m_y`` (C + 1, C + 1): the margin EBL adds between target y and class k."""
    if not isinstance(mean_score, torch.Tensor) or mean_score.dim() != 1:
        raise ValueError(f"mean_score must be a (C + 1,) tensor, got {tuple(getattr(mean_score, 'shape', ()))}")
    _check_mean_score(mean_score, mean_score.shape[0])
    log_m = mean_score.log()
    return log_m[None, :] - log_m[:, None]


def instance_mean_scores(probabilities: torch.Tensor, labels: torch.Tensor, instance: torch.Tensor):
    """Per object with a positive RoI: its class and ``s̄`` = mean probability of that class over its RoIs.

    probabilities (R, C + 1) softmax, column 0 background; labels (R,) in 0..C (0 background);
    instance (R,) long, an id shared by the positive RoIs of one object (any ints; background
    RoIs are ignored whatever their id). -> classes (K,) in 0..C-1, scores (K,), one row per
    distinct object id among the positives, in increasing id order. Detached: the score is a
    statistic, not a path for gradients.
    """
    if not isinstance(probabilities, torch.Tensor) or probabilities.dim() != 2:
        raise ValueError(f"probabilities must be (R, C + 1), got {tuple(getattr(probabilities, 'shape', ()))}")
    rows = probabilities.shape[0]
    for name, value in (("labels", labels), ("instance", instance)):
        if not isinstance(value, torch.Tensor) or value.shape != (rows,):
            raise ValueError(f"{name} must be ({rows},), got {tuple(getattr(value, 'shape', ()))}")
        if value.dtype != torch.long:
            raise TypeError(f"{name} must be long, got {value.dtype}")
    if not bool(torch.isfinite(probabilities).all()):
        raise ValueError("probabilities must be finite")
    positive = labels > 0                                                                # (R,)
    if labels.numel() and int(labels.max()) >= probabilities.shape[1]:
        raise ValueError(f"labels must lie in 0..{probabilities.shape[1] - 1}")
    scores = probabilities.detach()[positive].gather(1, labels[positive, None])[:, 0]  # (P,) prob of own class
    ids, inverse = instance[positive].unique(return_inverse=True)                       # (K,), (P,)
    sums = scores.new_zeros(len(ids)).index_add_(0, inverse, scores)
    counts = scores.new_zeros(len(ids)).index_add_(0, inverse, torch.ones_like(scores))
    classes = labels[positive].new_zeros(len(ids)).scatter_(0, inverse, labels[positive]) - 1  # (K,) in 0..C-1
    # one object, one class: every positive RoI of an id must carry the same label
    if bool((classes[inverse] != labels[positive] - 1).any()):
        raise ValueError("the positive RoIs of one instance id carry different labels")
    return classes, sums / counts.clamp(min=1)


class MeanScore:
    """The running mean classification score ``m`` (C + 1,), kit order: ``m[0]`` background.

    ``update(classes (K,), scores (K,))`` folds one batch in: per class with ``n_c`` objects,
    ``m_c <- alpha^{n_c} m_c + (1 - alpha^{n_c}) mean(scores of c)``; classes absent from the
    batch keep their value; background is reset to ``bg_score``.
    """

    def __init__(self, num_classes: int, alpha: float = 0.9, init: float = 0.01, bg_score: float = 0.01,
                 device=None):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        self.alpha = _check_fraction("alpha", alpha)
        init, bg_score = _check_fraction("init", init), _check_fraction("bg_score", bg_score)
        self.num_classes, self.bg_score = num_classes, bg_score
        self.values = torch.full((num_classes + 1,), init, device=device)            # (C + 1,)
        self.values[0] = bg_score

    @property
    def foreground(self) -> torch.Tensor:
        """(C,): ``m_c`` of the classes, in class order."""
        return self.values[1:]

    def update(self, classes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Fold in one batch's objects; returns the new ``m`` (C + 1,)."""
        if not isinstance(classes, torch.Tensor) or classes.dim() != 1 or classes.dtype != torch.long:
            raise ValueError("classes must be a 1-D long tensor of class ids 0..C-1")
        if not isinstance(scores, torch.Tensor) or scores.shape != classes.shape or not scores.is_floating_point():
            raise ValueError(f"scores must be a float tensor of shape {tuple(classes.shape)}")
        if classes.numel() == 0:  # no object with a positive RoI: nothing to learn, background still reset
            self.values[0] = self.bg_score
            return self.values
        if int(classes.min()) < 0 or int(classes.max()) >= self.num_classes:
            raise ValueError(f"classes must lie in 0..{self.num_classes - 1}")
        if not bool(torch.isfinite(scores).all()) or bool((scores < 0).any()) or bool((scores > 1).any()):
            raise ValueError("scores must be probabilities in [0, 1]")
        scores = scores.detach().to(self.values)
        classes = classes.to(self.values.device)
        counts = torch.bincount(classes, minlength=self.num_classes).to(self.values)  # (C,) n_c
        sums = torch.zeros_like(counts).index_add_(0, classes, scores)
        present = counts > 0
        keep = self.alpha ** counts                                                  # (C,) alpha^{n_c}
        batch_mean = sums / counts.clamp(min=1)
        foreground = self.values[1:]
        self.values[1:] = torch.where(present, keep * foreground + (1 - keep) * batch_mean, foreground)
        self.values[0] = self.bg_score
        return self.values
