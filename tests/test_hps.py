"""HPS-Det pieces: static top-k assignment, dynamic top-k, the loss, the RBF surrogate search."""
import math

import numpy as np
import pytest
import torch
from test_assigners import scene  # the shared random scene (priors, objects, scores, predicted boxes)
from torchvision.ops import box_iou

from kit.det.assigners import alignment_metric, task_aligned_assign, topk_assign
from kit.det.boxes import points_inside
from kit.det.hps import choose_topk, hps_assign, hps_loss, hps_targets
from kit.hpo.rbf_search import RBFSearch


def tal_inputs(seed, num_gt=5):
    priors, gt, labels, scores, pred = scene(seed, num_gt)
    ious = box_iou(pred, gt)
    metric = alignment_metric(scores[:, labels], ious)
    return priors, gt, labels, scores, pred, metric, ious, points_inside(priors.points, gt)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("topk", [1, 5, 13, 40])
def test_static_topk_with_tal_metric_equals_task_aligned_assign(seed, topk):
    priors, gt, labels, scores, pred, metric, ious, inside = tal_inputs(seed)
    tal_assigned, tal_alignment = task_aligned_assign(scores, pred, priors.points, gt, labels, topk=topk)
    assigned, alignment = topk_assign(metric, ious, inside, topk)
    assert torch.equal(assigned, tal_assigned)
    assert torch.allclose(alignment, tal_alignment)
    # the same topk given per object (a tensor) is the same rule
    per_object, _ = topk_assign(metric, ious, inside, torch.full((len(gt),), topk))
    assert torch.equal(per_object, tal_assigned)


def test_per_object_k_bounds_the_positives_and_they_are_the_top_ranked():
    priors, gt, labels, scores, pred, metric, ious, inside = tal_inputs(7, num_gt=4)
    topk = torch.tensor([1, 3, 8, 20])
    assigned, _ = topk_assign(metric, ious, inside, topk)
    for m in range(len(gt)):
        mine = torch.nonzero(assigned == m).flatten()
        assert len(mine) <= topk[m]
        top = set(metric[:, m].topk(int(topk[m])).indices.tolist())
        assert set(mine.tolist()) <= top  # positives lie among the object's top topk
        assert inside[mine, m].all()
    # one object alone: exactly the top-k that lie inside it and have t > 0
    alone, _ = topk_assign(metric[:, 2:3], ious[:, 2:3], inside[:, 2:3], 8)
    top = metric[:, 2].topk(8).indices
    expected = top[inside[top, 2] & (metric[top, 2] > 0)]
    assert set(torch.nonzero(alone == 0).flatten().tolist()) == set(expected.tolist())


def test_topk_assign_rejects_bad_inputs():
    _, gt, _, _, _, metric, ious, inside = tal_inputs(1)
    with pytest.raises(ValueError, match="ious"):
        topk_assign(metric, ious[:, :2], inside, 3)
    with pytest.raises(ValueError, match="bool"):
        topk_assign(metric, ious, inside.float(), 3)
    with pytest.raises(ValueError, match=">= 1"):
        topk_assign(metric, ious, inside, 0)
    with pytest.raises(ValueError, match="integer"):
        topk_assign(metric, ious, inside, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="integer"):
        topk_assign(metric, ious, inside, 2.5)
    empty, _ = topk_assign(metric[:, :0], ious[:, :0], inside[:, :0], 3)
    assert (empty == -1).all()


def test_choose_topk_follows_the_iou_gain():
    # one object, priors ranked by metric 5 > 4 > 3 > 2 > 1, IoUs 0.9 0.8 0.6 0.3 0.2
    metric = torch.tensor([[5.0], [4.0], [3.0], [2.0], [1.0]])
    ious = torch.tensor([[0.9], [0.8], [0.6], [0.3], [0.2]])
    inside = torch.ones(5, 1, dtype=torch.bool)
    assert choose_topk(metric, ious, inside, [1, 3, 5], iou_floor=0.5).tolist() == [3]  # gains .4, .8, .4
    assert choose_topk(metric, ious, inside, [1, 3, 5], iou_floor=0.95).tolist() == [1]
    assert choose_topk(metric, ious, inside, [1, 3, 5], iou_floor=0.0).tolist() == [5]
    outside = inside.clone()
    outside[1:] = False  # only the first prior could become positive: ties -> the smallest k
    assert choose_topk(metric, ious, outside, [1, 3, 5], iou_floor=0.0).tolist() == [1]
    with pytest.raises(ValueError, match="topk_choices"):
        choose_topk(metric, ious, inside, [0, 2])
    with pytest.raises(ValueError, match="iou_floor"):
        choose_topk(metric, ious, inside, [1, 2], iou_floor=1.5)
    with pytest.raises(ValueError, match=r"\(N, M\)"):
        choose_topk(metric, ious[:3], inside, [1, 2])


def test_dynamic_topk_with_one_choice_is_static_topk():
    priors, gt, labels, scores, pred, *_ = tal_inputs(3)
    static, static_topk = hps_assign(scores, pred, priors.points, gt, labels, topk=6)
    dynamic, dynamic_topk = hps_assign(scores, pred, priors.points, gt, labels, topk_choices=[6])
    assert torch.equal(static.gt_index, dynamic.gt_index) and torch.equal(static.overlap, dynamic.overlap)
    assert dynamic_topk.tolist() == static_topk.tolist() == [6] * len(gt)
    _, chosen = hps_assign(scores, pred, priors.points, gt, labels, topk_choices=[2, 9, 15], iou_floor=0.2)
    assert set(chosen.tolist()) <= {2, 9, 15}
    with pytest.raises(ValueError, match="exactly one"):
        hps_assign(scores, pred, priors.points, gt, labels, topk=3, topk_choices=[3])
    with pytest.raises(ValueError, match="gt_labels"):
        hps_assign(scores, pred, priors.points, gt, labels + 10, topk=3)


def test_hps_loss_is_the_atss_loss_on_the_top_k_assignment(scenes):
    from kit.det.atss import ATSSHead, atss_loss, atss_loss_terms
    from kit.det.detector import DenseDetector
    from kit.det.tood import tal_targets

    torch.manual_seed(0)
    model = DenseDetector(ATSSHead(6, 16, 16), widths=(8, 16, 16, 16), fpn_channels=16)
    images, boxes, labels = scenes.batch(range(3))
    out = model(images)
    losses, topk_used = hps_loss(out, boxes, labels, topk=7)
    assert [t.tolist() for t in topk_used] == [[7] * len(l) for l in labels]
    # static top-7 on TOOD's metric is TAL with topk=7: the same loss as ATSS's terms on TAL's assignment
    tal = atss_loss_terms(out, boxes, labels, tal_targets(out, boxes, labels, topk=7)[0]).losses()
    assert all(torch.equal(losses[name], tal[name]) for name in tal)
    assignment, _ = hps_targets(out, boxes, labels, topk=7)
    assert assignment.gt_index.shape == assignment.overlap.shape == out.cls_probs.shape[:2]
    plain = atss_loss(out, boxes, labels)
    assert not torch.equal(losses["cls"], plain["cls"])  # another assignment, another loss


# ---------------------------------------------------------------------------- the RBF search

def bumpy(point):
    x = point[0]
    return -((x - 7) ** 2) / 10 + math.sin(x)


def test_rbf_surrogate_interpolates_and_search_is_cached_and_deterministic():
    calls = []
    search = RBFSearch(lambda p: calls.append(p) or bumpy(p), [(1, 20)], num_initial=3, seed=0)
    history = search.run(budget=8)
    assert len(history) == 8 and len(calls) == 8 and len(set(calls)) == 8  # never trained twice
    points = np.array(list(search.cache), dtype=float)
    assert np.allclose(search.predict(points), list(search.cache.values()), atol=1e-8)  # exact interpolation
    assert search.best == ((8,), bumpy((8,)))  # the global maximum, found in 8 of 20 evaluations
    assert all(isinstance(v, int) and 1 <= v <= 20 for p in history["point"] for v in p)
    assert history["best_so_far"].is_monotonic_increasing
    search.evaluate((8,))  # cached: no new call
    assert len(calls) == 8
    again = RBFSearch(bumpy, [(1, 20)], num_initial=3, seed=0).run(budget=8)
    assert again["point"].tolist() == history["point"].tolist()


def test_rbf_search_in_two_dimensions_improves_on_its_start():
    f = lambda p: -((p[0] - 3) ** 2) - 0.5 * (p[1] - 11) ** 2
    search = RBFSearch(f, [(0, 10), (0, 20)], num_initial=5, seed=1)
    history = search.run(budget=20)
    start = history["value"][:5].max()
    assert search.best[1] > start and search.best[1] >= -2
    big = RBFSearch(lambda p: -abs(p[0] - 500) - abs(p[1] - 900), [(0, 1000), (0, 2000)], num_initial=4, seed=2)
    big.run(budget=15)  # too big to enumerate: perturbation candidates
    assert big.best[1] > max(v for p, v in list(big.cache.items())[:4])


def test_rbf_search_rejects_bad_inputs():
    with pytest.raises(ValueError, match="bounds"):
        RBFSearch(bumpy, [(5, 1)])
    with pytest.raises(ValueError, match="bounds"):
        RBFSearch(bumpy, [(0.5, 3)])
    with pytest.raises(ValueError, match="outside"):
        RBFSearch(bumpy, [(1, 20)], initial=[(0,), (5,)])
    with pytest.raises(ValueError, match="budget"):
        RBFSearch(bumpy, [(1, 20)], num_initial=4).run(budget=2)
    with pytest.raises(ValueError, match="finite"):
        RBFSearch(lambda p: float("nan"), [(1, 20)]).run(budget=3)
    with pytest.raises(ValueError, match="2 distinct"):
        RBFSearch(bumpy, [(1, 20)], initial=[(3,), (3,)])
