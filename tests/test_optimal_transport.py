"""OTA / Dynamic Sparse R-CNN assignment: Sinkhorn against POT, the limits, the assignment rule."""
import itertools

import numpy as np
import ot
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import sigmoid_focal_loss

from kit.det.hungarian import classification_cost
from kit.det.optimal_transport import (background_cost, dynamic_k, linear_schedule, ot_assign,
                                       sinkhorn_log)


def rng(seed):
    return np.random.default_rng(seed)


def random_problem(m, n, seed, background=False):
    """A random (m, n) cost with random positive masses of equal totals (float64 numpy)."""
    g = rng(seed)
    cost = g.random((m, n))
    if background:  # OTA's shape: m - 1 objects of k units each, the rest to a background row (last)
        k = g.integers(1, 3, size=m - 1).astype(float)
        supply = np.concatenate([k, [n - k.sum()]])
        demand = np.ones(n)
    else:
        supply, demand = g.random(m) + 0.1, g.random(n) + 0.1
        demand *= supply.sum() / demand.sum()
    return cost, supply, demand


def ours(cost, supply, demand, reg, num_iters):
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x))
    return sinkhorn_log(t(cost), t(supply), t(demand), reg, num_iters).numpy()


@pytest.mark.parametrize("background", [False, True])
@pytest.mark.parametrize("reg, num_iters", [(0.5, 300), (0.1, 300)])  # both converged by then
def test_plan_agrees_with_pot_sinkhorn_log(background, reg, num_iters):
    for seed in range(2):
        cost, a, b = random_problem(4, 9, seed, background)
        reference = ot.sinkhorn(a, b, cost, reg, method="sinkhorn_log", numItermax=num_iters, stopThr=1e-13)
        np.testing.assert_allclose(ours(cost, a, b, reg, num_iters), reference, rtol=1e-6, atol=1e-12)


def test_same_iterates_as_pot_before_convergence():
    """Same update order (columns first) and start: equal after any number of iterations."""
    cost, a, b = random_problem(5, 11, 7, background=True)
    for iters in (1, 3, 7):
        reference = ot.sinkhorn(a, b, cost, 0.02, method="sinkhorn_log", numItermax=iters, stopThr=0.0, warn=False)
        np.testing.assert_allclose(ours(cost, a, b, 0.02, iters), reference, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_marginals_match_supply_and_demand(dtype):
    cost, a, b = random_problem(6, 20, 3, background=True)
    plan = sinkhorn_log(*(torch.tensor(x, dtype=dtype) for x in (cost, a, b)), 0.1, 500)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    assert (plan >= 0).all()
    torch.testing.assert_close(plan.sum(1), torch.tensor(a, dtype=dtype), rtol=tol, atol=tol)  # exact: last update
    torch.testing.assert_close(plan.sum(0), torch.tensor(b, dtype=dtype), rtol=tol, atol=tol)
    assert abs(float(plan.sum()) - 20) < 20 * tol  # supply units, not normalised to 1


def integral_plans(supply, n):
    """Every 0/1 plan with integer row sums ``supply`` and column sums 1 (small problems)."""
    for rows in itertools.product(range(len(supply)), repeat=n):
        if np.bincount(rows, minlength=len(supply)).tolist() == list(supply):
            plan = np.zeros((len(supply), n))
            plan[list(rows), range(n)] = 1
            yield plan


def test_small_epsilon_approaches_the_exact_plan():
    cost, a, b = rng(11).random((3, 5)), np.array([2.0, 1.0, 2.0]), np.ones(5)
    exact = ot.emd(a, b, cost)
    values = sorted(float(np.sum(p * cost)) for p in integral_plans([2, 1, 2], 5))
    assert np.sum(exact * cost) == pytest.approx(values[0])
    gap = values[1] - values[0]
    assert gap > 0.05  # the optimum is unique, by a margin
    plans = [ours(cost, a, b, gap * scale, 1500) for scale in (1, 0.3, 0.1, 0.03)]
    errors = [np.abs(plan - exact).sum() for plan in plans]  # L1 distance, out of a total mass of 5
    assert all(later < earlier for earlier, later in zip(errors, errors[1:]))
    assert errors[0] > 1 and errors[-1] < 1e-2
    assert np.sum(plans[-1] * cost) == pytest.approx(values[0], abs=1e-3)


def random_assignment_problem(n, m, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, m, generator=g, dtype=torch.float64), torch.rand(n, m, generator=g, dtype=torch.float64)


def hungarian_with_margin(cost: np.ndarray):
    """linear_sum_assignment's matching (as gt_index per row, -1 unmatched) and its margin over the
    second-best matching (which leaves out at least one of the best pairs)."""
    rows, cols = linear_sum_assignment(cost)
    best = cost[rows, cols].sum()
    second = np.inf
    for r, c in zip(rows, cols):
        forbidden = cost.copy()
        forbidden[r, c] = 1e9
        r2, c2 = linear_sum_assignment(forbidden)
        second = min(second, forbidden[r2, c2].sum())
    gt_index = torch.full((cost.shape[0],), -1)
    gt_index[rows] = torch.as_tensor(cols)
    return gt_index, second - best


def problems_with_margin(n, m, count, margin=0.03):
    """Random problems whose Hungarian optimum is unique by ``margin`` (the others are re-drawn)."""
    seed = 0
    while count:
        cost_fg, ious = random_assignment_problem(n, m, seed)
        cost_bg = torch.rand(n, generator=torch.Generator().manual_seed(1000 + seed), dtype=torch.float64)
        seed += 1
        expected, gap = hungarian_with_margin((cost_fg - cost_bg[:, None]).numpy())
        plain, plain_gap = hungarian_with_margin(cost_fg.numpy())
        if min(gap, plain_gap) >= margin:
            count -= 1
            yield cost_fg, ious, cost_bg, expected, plain


@pytest.mark.parametrize("cost_fg, ious, cost_bg, relative, plain", list(problems_with_margin(9, 5, 3)))
def test_unit_supply_with_small_epsilon_is_hungarian(cost_fg, ious, cost_bg, relative, plain):
    """k = 1 per object: a prohibitive (constant) background cost gives the Hungarian matching of
    C_fg; a per-query background cost gives that of C_fg - C_bg[:, None] (the catalog's invariant)."""
    prohibitive = ot_assign(cost_fg, ious, torch.full_like(cost_bg, 1e3), supply=1, epsilon=0.003, num_iters=600)
    assert torch.equal(prohibitive.gt_index, plain)
    positive = plain >= 0
    assert torch.equal(prohibitive.overlap[positive], ious[positive, plain[positive]])
    assert (prohibitive.overlap[~positive] == 0).all()
    relative_to_background = ot_assign(cost_fg, ious, cost_bg, supply=1, epsilon=0.003, num_iters=600)
    assert torch.equal(relative_to_background.gt_index, relative)


def test_positives_per_object_follow_a_growing_static_supply():
    """Integral k and a small epsilon: exactly k positives per object, growing over the stages."""
    cost_fg, ious = random_assignment_problem(16, 3, 5)
    cost_bg = torch.full((16,), 0.5, dtype=torch.float64)
    counts = []
    for k in linear_schedule(1.0, 4.0, 4):
        gt_index = ot_assign(cost_fg, ious, cost_bg, supply=k, epsilon=0.005, num_iters=400).gt_index
        counts.append(torch.bincount(gt_index[gt_index >= 0], minlength=3).tolist())
    assert counts == [[1] * 3, [2] * 3, [3] * 3, [4] * 3]


def test_dynamic_k_invariants():
    g = torch.Generator().manual_seed(0)
    ious = torch.rand(30, 6, generator=g) * (torch.rand(30, 6, generator=g) > 0.4)
    ious[:, 5] = 0.0  # an object nothing overlaps still gets k = 1
    previous = torch.zeros(6, dtype=torch.long)
    for q in range(1, 41):
        k = dynamic_k(ious, q)
        assert k.dtype == torch.long and (k >= 1).all() and (k <= min(q, 30)).all()
        assert (k >= previous).all()  # grows with q
        expected = [max(1, int(np.floor(np.sort(ious[:, j].numpy())[::-1][:q].sum()))) for j in range(6)]
        assert k.tolist() == expected
        previous = k
    assert int(dynamic_k(ious, 40)[5]) == 1
    assert dynamic_k(torch.ones(4, 2), 20).tolist() == [4, 4]  # k <= number of queries


def test_dynamic_supply_is_the_default():
    cost_fg, ious = random_assignment_problem(20, 3, 2)
    ious = 0.2 * ious
    ious[:6, 0] = 0.95  # object 0: six good queries -> k = floor(6 * 0.95 + ...) >= 5
    cost_fg[:6, 0], cost_fg[:6, 1:] = 0.0, 1.0  # ... that fit object 0 only
    cost_bg = torch.full((20,), 0.8, dtype=torch.float64)
    k = dynamic_k(ious, 20)
    assignment = ot_assign(cost_fg, ious, cost_bg, epsilon=0.005, num_iters=500)
    static = ot_assign(cost_fg, ious, cost_bg, supply=k, epsilon=0.005, num_iters=500)
    assert all(torch.equal(x, y) for x, y in zip(assignment, static))
    assert int(k[0]) >= 5 and (assignment.gt_index[:6] == 0).all()


def test_zero_background_supply_assigns_every_query():
    cost_fg, ious = random_assignment_problem(6, 3, 4)
    assignment = ot_assign(cost_fg, ious, torch.zeros(6, dtype=torch.float64), supply=2, epsilon=0.01,
                           num_iters=500)
    assert torch.bincount(assignment.gt_index, minlength=3).tolist() == [2, 2, 2]
    assert torch.isfinite(assignment.overlap).all()


def test_zero_objects_and_empty_problems():
    assignment = ot_assign(torch.zeros(7, 0), torch.zeros(7, 0), torch.rand(7))
    assert (assignment.gt_index == -1).all() and (assignment.overlap == 0).all()
    assert ot_assign(torch.zeros(0, 0), torch.zeros(0, 0), torch.zeros(0)).gt_index.shape == (0,)
    assert sinkhorn_log(torch.zeros(0, 4), torch.zeros(0), torch.zeros(4), 0.1, 10).shape == (0, 4)
    assert (sinkhorn_log(torch.rand(2, 3), torch.zeros(2), torch.zeros(3), 0.1, 10) == 0).all()


def test_default_float32_path_is_finite_with_exact_rows():
    """OTA's defaults (epsilon 0.1, 50 iterations) in float32, with OTA's 1e6 for forbidden pairs."""
    g = torch.Generator().manual_seed(3)
    cost_fg, ious = 3 * torch.rand(64, 5, generator=g), 0.3 * torch.rand(64, 5, generator=g)
    cost_fg[40:, 0] = 1e6
    assignment = ot_assign(cost_fg, ious, 2 * torch.rand(64, generator=g))
    assert assignment.gt_index.dtype == torch.long and assignment.overlap.dtype == torch.float32
    assert ((assignment.gt_index >= -1) & (assignment.gt_index < 5)).all()
    assert not (assignment.gt_index[40:] == 0).any()  # the forbidden pairs
    assert (assignment.gt_index >= 0).any()


def test_background_cost_plus_hungarian_focal_cost_is_the_one_hot_focal_loss():
    g = torch.Generator().manual_seed(0)
    logits, labels = 2 * torch.randn(6, 4, generator=g), torch.tensor([0, 3, 3, 1])
    one_hot = torch.nn.functional.one_hot(labels, 4).float()  # (M, K)
    reference = sigmoid_focal_loss(logits[:, None, :].expand(6, 4, 4), one_hot[None].expand(6, 4, 4)).sum(-1)
    torch.testing.assert_close(classification_cost(logits, labels) + background_cost(logits)[:, None], reference,
                               rtol=1e-4, atol=1e-5)


def test_linear_schedule():
    assert linear_schedule(0.5, 3.0, 6) == [3.0 - 0.5 * (6 - t) for t in range(1, 7)]  # the reimplementation's k_t
    assert linear_schedule(5, 20, 1) == [20.0]
    assert [round(q) for q in linear_schedule(5, 20, 4)] == [5, 10, 15, 20]
