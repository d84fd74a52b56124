"""Label assignment as optimal transport: OTA's rule, with the per-stage supplies of Dynamic Sparse R-CNN.

OTA (Ge et al., CVPR 2021, arXiv 2103.14259) treats assignment as transporting goods. Every
ground truth ``i`` is a supplier of ``k_i`` units (it wants ``k_i`` positives), a background
supplier holds the rest, and every query (prior, proposal) ``j`` demands one unit:

.. math:: \\min_{\\pi \\ge 0} \\sum_{ij} C_{ij}\\pi_{ij} - \\epsilon H(\\pi), \\quad
          \\sum_j \\pi_{ij} = \\mu_i, \\quad \\sum_i \\pi_{ij} = 1,
          \\quad \\mu = (k_1, \\dots, k_M, N - \\textstyle\\sum_i k_i)

with cost rows ``C_ij`` (query ``j`` learning object ``i``) and a last row ``C_bg,j`` (query
``j`` learning "background"). The entropic problem is solved by Sinkhorn's iterations
(:func:`sinkhorn_log`); each query then goes to the row of its largest plan entry after every
row is divided by its own maximum (background -> -1). OTA's ``k_i`` is dynamic
(:func:`dynamic_k`): the sum of the object's ``iou_topk`` (OTA's q = 20) best IoUs, floored,
at least 1 -- an object many predictions overlap well gets more positives.

Dynamic Sparse R-CNN (Hong et al., CVPR 2022, arXiv 2205.02101, "DLA") replaces Sparse R-CNN's
Hungarian matching by this assignment in every cascade stage and lets the supplies grow over
the stages (later stages refine better boxes, so they match more loosely). The per-stage rule
is a parameter here: pass ``supply`` (a static ``k``, scalar or per object) or ``iou_topk``
(dynamic ``k``) per stage; :func:`linear_schedule` builds growing per-stage values.
UNVERIFIED: the paper's text could not be read here and no official code was found, so its
exact schedule is not known to this kit. The public reimplementation
(``Rapisurazurite/Dynamic-sparse-rcnn``, ``sparse_rcnn/utils/OTA.py``, read) uses a static,
fractional ``k_t = K - 0.5 (T - t)`` with K = 3, T = 6 (= ``linear_schedule(0.5, 3.0, 6)``),
epsilon 1e-3 and 100 iterations; a growing q in OTA's dynamic ``k`` is the catalog's reading.

Choices taken from the official OTA code (``Megvii-BaseDetection/OTA``, ``fcos.py``:
``get_ground_truth`` and ``SinkhornDistance``, read):

* the background row is the **last** row, its supply is ``N - sum(k)`` (the reimplementation
  writes ``mu[:-1] = ...`` there, a bug); the plan is in supply units (sum N), not normalised;
* log-domain iterations, a fixed number of them (no early stop), the column potential
  updated first, so the row marginals are exact and the columns approximate; the official
  potentials are ours times epsilon (same iterates); it adds 1e-8 inside the logs, we take
  exact logs so that a zero supply (``sum(k) = N``) is an exact zero row;
* every row of the plan (background included) is divided by its maximum before the argmax;
* the assignment is computed without gradient (the official plan is detached).

:func:`sinkhorn_log` takes one problem (unbatched): the number of objects differs per image.
"""
from __future__ import annotations

import math

import torch
from torchvision.ops import sigmoid_focal_loss

from kit.det.assigners import Assignment
from kit.det.validation import check_shape

__all__ = ["sinkhorn_log", "dynamic_k", "linear_schedule", "background_cost", "ot_assign"]

MASS_RTOL = 1e-5  # total supply must equal total demand within this fraction of the total


def _check_float(name: str, tensor, like: torch.Tensor | None = None) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
    if like is not None and tensor.dtype != like.dtype:
        raise TypeError(f"{name} has dtype {tensor.dtype}; expected {like.dtype}, the cost's dtype")
    if like is not None and tensor.device != like.device:
        raise ValueError(f"{name} is on {tensor.device} but the cost is on {like.device}")


def _check_finite(name: str, tensor: torch.Tensor, hint: str = "") -> None:
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} has {int((~torch.isfinite(tensor)).sum())} non-finite values; it must be "
                         f"finite{hint}")


def _check_solver(epsilon: float, num_iters: int) -> None:
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be a finite number > 0 (the entropic regularisation), got {epsilon!r}")
    if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 1:
        raise ValueError(f"num_iters must be an int >= 1, got {num_iters!r}")


def _check_masses(supply: torch.Tensor, demand: torch.Tensor) -> None:
    for name, mass in (("supply", supply), ("demand", demand)):
        _check_finite(name, mass)
        if mass.numel() and float(mass.min()) < 0:
            raise ValueError(f"{name} must be >= 0 everywhere, got min {float(mass.min()):.6g}")
    total_supply, total_demand = float(supply.sum()), float(demand.sum())
    if abs(total_supply - total_demand) > MASS_RTOL * max(1.0, total_supply, total_demand):
        raise ValueError(f"total supply {total_supply:.8g} != total demand {total_demand:.8g}; a transport plan "
                         f"needs equal totals (within a relative {MASS_RTOL:g})")


def sinkhorn_log(cost: torch.Tensor, supply: torch.Tensor, demand: torch.Tensor, epsilon: float,
                 num_iters: int) -> torch.Tensor:
    """The entropic transport plan (m, n) from ``supply`` (m,) to ``demand`` (n,) at ``cost`` (m, n).

    The plan is ``diag(u) K diag(v)`` with ``K = exp(-cost / epsilon)``; the iterations run on
    ``log u`` and ``log v`` with logsumexp, so a small epsilon neither under- nor overflows:

        log v = log demand - LSE_i(-cost_ij / eps + log u_i)     (columns first, as OTA and POT)
        log u = log supply - LSE_j(-cost_ij / eps + log v_j)

    from ``log u = 0``, exactly ``num_iters`` times. Unbatched; differentiable (the loop is
    unrolled), supplies and demands need not sum to 1, only to the same total. Zero masses are
    allowed (exact zero rows or columns); empty problems give an empty plan.
    """
    for name, tensor in (("cost", cost), ("supply", supply), ("demand", demand)):
        _check_float(name, tensor, like=None if name == "cost" else cost)
    check_shape("cost", cost, (None, None))
    m, n = cost.shape
    check_shape("supply", supply, (m,))
    check_shape("demand", demand, (n,))
    _check_solver(epsilon, num_iters)
    _check_finite("cost", cost, " (for a forbidden pair use a large finite cost, as OTA's 1e6)")
    _check_masses(supply, demand)
    if m == 0 or n == 0 or float(supply.sum()) == 0:
        return cost.new_zeros((m, n))

    log_kernel = -cost / epsilon  # (m, n)
    log_supply, log_demand = supply.log(), demand.log()  # -inf where a mass is 0
    log_u = cost.new_zeros(m)
    for _ in range(num_iters):
        log_v = log_demand - torch.logsumexp(log_kernel + log_u[:, None], dim=0)  # (n,)
        log_u = log_supply - torch.logsumexp(log_kernel + log_v[None, :], dim=1)  # (m,)
    return torch.exp(log_kernel + log_u[:, None] + log_v[None, :])


def dynamic_k(ious: torch.Tensor, iou_topk: int = 20) -> torch.Tensor:
    """OTA's dynamic ``k`` per object (M,) long: floor of the sum of its ``iou_topk`` best IoUs, >= 1.

    ious: (N, M), queries by objects, in [0, 1] (OTA multiplies them by its centre prior
    first; pass them so masked). Since an IoU is at most 1, ``1 <= k <= max(1, min(iou_topk, N))``,
    and ``k`` does not decrease when ``iou_topk`` grows.
    """
    _check_ious(ious)
    if isinstance(iou_topk, bool) or not isinstance(iou_topk, int) or iou_topk < 1:
        raise ValueError(f"iou_topk must be an int >= 1 (OTA's q, the number of IoUs summed), got {iou_topk!r}")
    n = ious.shape[0]
    best = ious.topk(min(iou_topk, n), dim=0).values  # (min(q, N), M)
    return best.sum(dim=0).floor().long().clamp(min=1)  # OTA: clamp(sum.int(), min=1)


def linear_schedule(first: float, last: float, num_stages: int) -> list[float]:
    """Per-stage values from ``first`` (stage 1) to ``last`` (stage T), evenly spaced.

    ``linear_schedule(0.5, 3.0, 6)`` is the reimplementation's static ``k_t = 3 - 0.5 (6 - t)``;
    for a growing OTA q, round the values (``[round(q) for q in linear_schedule(5, 20, 6)]``;
    the paper's values are unverified, see the module docstring). One stage gives ``[last]``.
    """
    if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 1:
        raise ValueError(f"num_stages must be an int >= 1, got {num_stages!r}")
    if not (math.isfinite(first) and math.isfinite(last)):
        raise ValueError(f"first and last must be finite, got first={first}, last={last}")
    if num_stages == 1:
        return [float(last)]
    return [first + (last - first) * t / (num_stages - 1) for t in range(num_stages)]


def background_cost(logits: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """(N,) cost of query n learning "background": its sigmoid focal loss against all zeros, summed over classes.

    As OTA's ``loss_cls_bg`` and the reimplementation's ``loss_bg``. Their foreground cost uses
    the focal loss of the one-hot target summed over classes, which equals this plus
    :func:`kit.det.hungarian.classification_cost` (focal mode) at the object's class, so
    ``match_cost(...) + background_cost(logits)[:, None]`` is that foreground cost (up to the
    1e-8 the Hungarian cost adds inside its logs).
    """
    _check_float("logits", logits)
    check_shape("logits", logits, (None, None))
    return sigmoid_focal_loss(logits, torch.zeros_like(logits), alpha=alpha, gamma=gamma).sum(dim=-1)


def _check_ious(ious) -> None:
    _check_float("ious", ious)
    check_shape("ious", ious, (None, None))
    if ious.numel() and not bool(((ious >= 0) & (ious <= 1)).all()):  # NaN fails both
        raise ValueError(f"ious must be IoUs, finite in [0, 1]; got values in [{float(ious.min()):.4g}, "
                         f"{float(ious.max()):.4g}]" + (" and NaN" if bool(ious.isnan().any()) else ""))


def _object_supply(supply, ious: torch.Tensor, iou_topk: int) -> torch.Tensor:
    """(M,) units per object: dynamic k from the IoUs, or the caller's static k (scalar or (M,))."""
    m = ious.shape[1]
    if supply is None:
        return dynamic_k(ious, iou_topk).to(ious.dtype)
    units = torch.as_tensor(supply, dtype=ious.dtype, device=ious.device)  # a count, not data: converted
    if units.dim() > 1 or (units.dim() == 1 and units.numel() != m):
        raise ValueError(f"supply must be a number or an (M,) = ({m},) tensor of units per object, "
                         f"got shape {tuple(units.shape)}")
    if not bool((torch.isfinite(units) & (units > 0)).all()):
        raise ValueError(f"supply must be finite and > 0 for every object (each wants some positives), "
                         f"got {units.tolist()}")
    return units.expand(m).clone()


@torch.no_grad()
def ot_assign(cost_fg: torch.Tensor, ious: torch.Tensor, cost_bg: torch.Tensor, supply=None,
              iou_topk: int = 20, epsilon: float = 0.1, num_iters: int = 50) -> Assignment:
    """OTA / Dynamic Sparse R-CNN assignment of N queries to M objects.

    cost_fg: (N, M) cost of query n learning object m (e.g. OTA's focal + IoU loss; Sparse
    R-CNN's matching cost); ious: (N, M) IoU of query n's box with object m, for the dynamic
    ``k`` and the returned overlap; cost_bg: (N,) cost of query n learning background
    (:func:`background_cost`). supply: None (OTA's dynamic ``k`` from ``iou_topk`` best IoUs),
    or the units per object, a number or an (M,) tensor (may be fractional). epsilon,
    num_iters: Sinkhorn's (OTA: 0.1 and 50). Refused: a total supply ``sum(k)`` above N.

    Returns, per query, the index of its object (-1 background) and its IoU with it (0 for
    background). No objects (M = 0): every query is background.
    """
    _check_float("cost_fg", cost_fg)
    check_shape("cost_fg", cost_fg, (None, None))
    n, m = cost_fg.shape
    _check_ious(ious)
    _check_float("ious", ious, like=cost_fg)
    check_shape("ious", ious, (n, m))
    _check_float("cost_bg", cost_bg, like=cost_fg)
    check_shape("cost_bg", cost_bg, (n,))
    _check_solver(epsilon, num_iters)
    _check_finite("cost_fg", cost_fg, " (for a forbidden pair use a large finite cost, as OTA's 1e6)")
    _check_finite("cost_bg", cost_bg)
    gt_index = torch.full((n,), -1, dtype=torch.long, device=cost_fg.device)
    if m == 0:
        return Assignment(gt_index, cost_fg.new_zeros(n))

    units = _object_supply(supply, ious, iou_topk)  # (M,)
    background = n - float(units.sum())
    if background < -MASS_RTOL * max(1.0, n):
        raise ValueError(f"the {m} objects supply {float(units.sum()):.6g} units but there are only {n} queries, "
                         "each demanding 1; use a smaller supply or iou_topk, or more queries")
    supply_all = torch.cat([units, units.new_tensor([max(background, 0.0)])])  # (M + 1,), background last
    cost = torch.cat([cost_fg.T, cost_bg[None, :]], dim=0)  # (M + 1, N)
    plan = sinkhorn_log(cost, supply_all, cost.new_ones(n), epsilon, num_iters)  # (M + 1, N)

    # Each row divided by its maximum (OTA), so every object's best query counts as 1.
    row_max = plan.max(dim=1, keepdim=True).values  # (M + 1, 1)
    plan = plan / torch.where(row_max > 0, row_max, torch.ones_like(row_max))
    best_row = plan.argmax(dim=0)  # (N,)
    positive = best_row < m
    gt_index[positive] = best_row[positive]
    overlap = torch.zeros(n, dtype=ious.dtype, device=ious.device)
    overlap[positive] = ious[positive.nonzero().flatten(), gt_index[positive]]
    return Assignment(gt_index, overlap)
