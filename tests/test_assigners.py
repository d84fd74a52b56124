"""The label assigners against slow loop versions of mmdetection's, and their invariants.

:func:`scene` is shared with tests/test_hps.py (HPS-Det's top-k rule on the same inputs).
"""
import pytest
import torch
from torchvision.ops import box_iou

from kit.det.assigners import Assignment, alignment_metric, atss_assign, max_iou_assign, task_aligned_assign
from kit.det.priors import point_priors


def scene(seed=0, num_gt=5, size=96, num_classes=4):
    """Priors of a 96 px image, ``num_gt`` random objects, random scores and predicted boxes."""
    g = torch.Generator().manual_seed(seed)
    priors = point_priors([(12, 12), (6, 6), (3, 3)], [8, 16, 32])
    xy = torch.rand(num_gt, 2, generator=g) * size * 0.6
    wh = torch.rand(num_gt, 2, generator=g) * size * 0.35 + 8
    gt = torch.cat([xy, xy + wh], 1)
    labels = torch.randint(0, num_classes, (num_gt,), generator=g)
    n = priors.points.shape[0]
    scores = torch.rand(n, num_classes, generator=g)
    ltrb = torch.rand(n, 4, generator=g) * 30 + 2
    pred = torch.cat([priors.points - ltrb[:, :2], priors.points + ltrb[:, 2:]], 1)
    return priors, gt, labels, scores, pred


def tal_reference(scores, pred, points, gt, labels, topk, alpha, beta):
    """A slow loop version of mmdetection's TaskAlignedAssigner, step by step."""
    n, m = scores.shape[0], gt.shape[0]
    ious = box_iou(pred, gt)
    metric = [[float(scores[i, labels[j]]) ** alpha * float(ious[i, j]) ** beta for j in range(m)] for i in range(n)]
    claims = {i: [] for i in range(n)}
    for j in range(m):
        ranked = sorted(range(n), key=lambda i: -metric[i][j])[: min(topk, n)]
        for i in ranked:
            x, y = points[i].tolist()
            inside = min(x - gt[j, 0], y - gt[j, 1], gt[j, 2] - x, gt[j, 3] - y) > 0.01
            if metric[i][j] > 0 and inside:
                claims[i].append(j)
    assigned, alignment = [-1] * n, [0.0] * n
    for i, objects in claims.items():
        if objects:
            best = max(objects, key=lambda j: (float(ious[i, j]), -j))
            assigned[i], alignment[i] = best, metric[i][best]
    return torch.tensor(assigned), torch.tensor(alignment)


def atss_reference(anchors, num_per_level, gt, topk):
    """A slow loop version of mmdetection's ATSSAssigner."""
    n, m = anchors.shape[0], gt.shape[0]
    ious = box_iou(anchors, gt)
    ac = (anchors[:, :2] + anchors[:, 2:]) / 2
    gc = (gt[:, :2] + gt[:, 2:]) / 2
    claims = {i: [] for i in range(n)}
    for j in range(m):
        candidates, start = [], 0
        for count in num_per_level:
            d = [(float((ac[i] - gc[j]).norm()), i) for i in range(start, start + count)]
            candidates += [i for _, i in sorted(d)[: min(topk, count)]]
            start += count
        values = torch.tensor([float(ious[i, j]) for i in candidates])
        threshold = values.mean() + values.std()
        for i in candidates:
            x, y = ac[i].tolist()
            inside = min(x - gt[j, 0], y - gt[j, 1], gt[j, 2] - x, gt[j, 3] - y) > 0.01
            if ious[i, j] >= threshold and inside:
                claims[i].append(j)
    assigned = [-1] * n
    for i, objects in claims.items():
        if objects:
            assigned[i] = max(objects, key=lambda j: (float(ious[i, j]), -j))
    return torch.tensor(assigned)


@pytest.mark.parametrize("seed", range(4))
def test_task_aligned_assign_matches_the_loop_reference(seed):
    priors, gt, labels, scores, pred = scene(seed)
    assignment = task_aligned_assign(scores, pred, priors.points, gt, labels, topk=13)
    ref_assigned, ref_alignment = tal_reference(scores, pred, priors.points, gt, labels, 13, 1.0, 6.0)
    assert isinstance(assignment, Assignment)
    assert torch.equal(assignment.gt_index, ref_assigned)
    assert torch.allclose(assignment.overlap, ref_alignment, atol=1e-7)  # the metric t it ranked by


def test_task_aligned_assign_invariants():
    priors, gt, labels, scores, pred = scene(1, num_gt=6)
    assigned, alignment = task_aligned_assign(scores, pred, priors.points, gt, labels, topk=13)
    assert assigned.shape == alignment.shape == (priors.points.shape[0],)
    assert assigned.min() >= -1 and assigned.max() < 6
    for j in range(6):
        assert int((assigned == j).sum()) <= 13
    negative = assigned < 0
    assert (alignment[negative] == 0).all()
    assert (alignment[~negative] > 0).all() and (alignment <= 1).all() and (alignment >= 0).all()
    pos = torch.nonzero(~negative).flatten()
    x, y = priors.points[pos].T
    box = gt[assigned[pos]]
    assert ((x > box[:, 0]) & (x < box[:, 2]) & (y > box[:, 1]) & (y < box[:, 3])).all()


def test_task_aligned_assign_follows_a_permutation_of_the_objects():
    priors, gt, labels, scores, pred = scene(2, num_gt=5)
    assigned, alignment = task_aligned_assign(scores, pred, priors.points, gt, labels)
    perm = torch.tensor([3, 0, 4, 1, 2])
    assigned_p, alignment_p = task_aligned_assign(scores, pred, priors.points, gt[perm], labels[perm])
    mapped = torch.where(assigned_p >= 0, perm[assigned_p.clamp(min=0)], -1)
    assert torch.equal(mapped, assigned)
    assert torch.allclose(alignment_p, alignment)


def test_task_aligned_assign_edge_cases_and_errors():
    priors, gt, labels, scores, pred = scene(0)
    assigned, alignment = task_aligned_assign(scores, pred, priors.points, gt[:0], labels[:0])
    assert (assigned == -1).all() and (alignment == 0).all()
    with pytest.raises(ValueError, match="pred_boxes"):
        task_aligned_assign(scores, pred[:5], priors.points, gt, labels)
    with pytest.raises(ValueError, match="gt_labels"):
        task_aligned_assign(scores, pred, priors.points, gt, labels.clone().fill_(7))
    with pytest.raises(ValueError, match="topk"):
        task_aligned_assign(scores, pred, priors.points, gt, labels, topk=0)


def test_alignment_metric_is_monotone_and_bounded():
    s = torch.linspace(0, 1, 11)
    u = torch.linspace(0, 1, 11)
    t = alignment_metric(s[:, None], u[None, :])
    assert (t >= 0).all() and (t <= 1).all()
    assert (t.diff(dim=0) >= 0).all() and (t.diff(dim=1) >= 0).all()


@pytest.mark.parametrize("seed", range(3))
def test_atss_matches_the_loop_reference(seed):
    priors, gt, _, _, _ = scene(seed)
    anchors = priors.anchor_boxes(4.0)
    assigned, iou = atss_assign(anchors, priors.num_per_level, gt, topk=9)
    assert torch.equal(assigned, atss_reference(anchors, priors.num_per_level, gt, 9))
    pos = assigned >= 0
    assert torch.allclose(iou[pos], box_iou(anchors, gt)[pos.nonzero().flatten(), assigned[pos]])
    assert (iou[~pos] == 0).all()  # the overlap is with the assigned object: none for background


def test_atss_positives_lie_inside_and_number_at_most_k_per_level():
    priors, gt, _, _, _ = scene(5, num_gt=6)
    assigned, _ = atss_assign(priors.anchor_boxes(4.0), priors.num_per_level, gt, topk=9)
    assert (assigned >= 0).any()
    for j in range(6):
        for level in range(3):
            assert int(((assigned == j) & (priors.levels == level)).sum()) <= 9
    pos = torch.nonzero(assigned >= 0).flatten()
    x, y = priors.points[pos].T
    box = gt[assigned[pos]]
    assert ((x > box[:, 0]) & (x < box[:, 2]) & (y > box[:, 1]) & (y < box[:, 3])).all()


def test_atss_rejects_bad_level_counts():
    priors, gt, _, _, _ = scene(0)
    with pytest.raises(ValueError, match="num_per_level"):
        atss_assign(priors.anchor_boxes(4.0), [10, 10], gt)


def test_max_iou_assign_thresholds():
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 6], [0, 0, 10, 4.5], [50, 50, 60, 60], [20, 20, 30, 30]])
    gt = torch.tensor([[0.0, 0, 10, 10], [21.0, 21, 31, 36]])
    assigned, max_iou = max_iou_assign(anchors, gt, pos_iou_threshold=0.5, neg_iou_threshold=0.4)
    # IoUs with gt 0: 1.0, 0.6, 0.45 (ignored band), 0 (negative); anchor 4 is gt 1's best match.
    assert assigned.tolist() == [0, 0, -2, -1, 1]
    assert torch.allclose(max_iou[:3], torch.tensor([1.0, 0.6, 0.45]))
    # without low-quality matching anchor 4 (IoU 0.48 with gt 1) stays in the ignored band
    plain = max_iou_assign(anchors, gt, 0.5, 0.4, match_low_quality=False)
    assert plain.gt_index.tolist() == [0, 0, -2, -1, -2]
    with pytest.raises(ValueError, match="neg_iou_threshold"):
        max_iou_assign(anchors, gt, pos_iou_threshold=0.3, neg_iou_threshold=0.4)
