"""LOCE (kit.det.equilibrium_loss, kit.det.feature_memory): the catalog's invariants."""
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare

from kit.det.equilibrium_loss import MeanScore, equilibrium_loss, instance_mean_scores, margin_matrix
from kit.det.feature_memory import SIGN_PATTERNS, FeatureMemory, jittered_boxes, sampling_probabilities


def _problem(rows=40, classes=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, classes + 1, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, classes + 1, (rows,), generator=g)
    m = torch.rand(classes + 1, generator=g, dtype=torch.float64) * 0.9 + 0.01
    return logits, labels, m


def test_constant_mean_score_is_cross_entropy():
    logits, labels, _ = _problem()
    for value in (0.01, 0.5, 1.0):
        m = torch.full((logits.shape[1],), value, dtype=torch.float64)
        assert torch.allclose(equilibrium_loss(logits, labels, m), F.cross_entropy(logits, labels), atol=1e-12)


def test_invariant_to_scaling_the_mean_score():
    logits, labels, m = _problem(seed=1)
    for scale in (1e-3, 7.0, 1e3):
        assert torch.allclose(equilibrium_loss(logits, labels, m), equilibrium_loss(logits, labels, scale * m), atol=1e-10)


def test_gradient_is_softmax_of_shifted_logits_minus_onehot():
    logits, labels, m = _problem(seed=2)
    z = logits.clone().requires_grad_(True)
    equilibrium_loss(z, labels, m).backward()
    expected = ((logits + m.log()).softmax(-1) - F.one_hot(labels, logits.shape[1])) / len(labels)
    assert torch.allclose(z.grad, expected, atol=1e-12)


def test_official_form_with_background_last():
    # the official loss: -log(m_y e^{z_y} / sum_k m_k e^{z_k}) with bg last; the kit's is the same after roll(., 1)
    logits, labels, m = _problem(seed=3)
    official_logits, official_m = logits.roll(-1, 1), m.roll(-1)              # bg column 0 -> last
    official_labels = torch.where(labels == 0, logits.shape[1] - 1, labels - 1)
    z = official_logits - official_logits.max(-1, keepdim=True).values
    numerator = official_m[None] * z.exp()
    official = -(numerator / numerator.sum(-1, keepdim=True)).gather(1, official_labels[:, None]).log().mean()
    assert torch.allclose(equilibrium_loss(logits, labels, m), official, atol=1e-12)


def test_not_below_cross_entropy_when_the_target_is_weakest():
    logits, labels, m = _problem(seed=4)
    for y in range(logits.shape[1]):
        weak = m.clone()
        weak[y] = m.min() / 2  # m_y <= m_k for every k
        rows = labels == y
        if rows.any():
            assert float(equilibrium_loss(logits[rows], labels[rows], weak)) >= float(F.cross_entropy(logits[rows], labels[rows])) - 1e-12


def test_margin_matrix():
    m = torch.tensor([0.01, 0.1, 0.5, 0.02], dtype=torch.float64)
    delta = margin_matrix(m)
    assert torch.allclose(delta.diagonal(), torch.zeros(4, dtype=torch.float64))
    assert torch.allclose(delta[1, 2], torch.log(torch.tensor(5.0, dtype=torch.float64)))
    assert torch.allclose(delta, -delta.T)


def test_alpha_power_update_equals_sequential_ema_steps():
    tracker, sequential = MeanScore(5, alpha=0.9), MeanScore(5, alpha=0.9)
    classes = torch.tensor([2, 2, 2, 4])
    scores = torch.tensor([0.3, 0.3, 0.3, 0.8])
    tracker.update(classes, scores)
    for c, s in zip(classes, scores):  # n single-object steps with the same value
        sequential.update(c[None], s[None])
    assert torch.allclose(tracker.values, sequential.values, atol=1e-7)
    assert abs(float(tracker.foreground[2]) - (0.9 ** 3 * 0.01 + (1 - 0.9 ** 3) * 0.3)) < 1e-7
    untouched = [0, 1, 3]
    assert torch.allclose(tracker.foreground[untouched], torch.full((3,), 0.01))


def test_alpha_update_uses_the_batch_mean():
    tracker = MeanScore(3, alpha=0.5)
    tracker.update(torch.tensor([1, 1]), torch.tensor([0.2, 0.6]))
    assert abs(float(tracker.foreground[1]) - (0.25 * 0.01 + 0.75 * 0.4)) < 1e-7


def test_background_stays_fixed():
    tracker = MeanScore(4, bg_score=0.01)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        tracker.update(torch.randint(0, 4, (7,), generator=g), torch.rand(7, generator=g))
        assert float(tracker.values[0]) == pytest.approx(0.01)
    tracker.update(torch.zeros(0, dtype=torch.long), torch.zeros(0))
    assert float(tracker.values[0]) == pytest.approx(0.01)


def test_instance_mean_scores_ignore_background_and_detach():
    logits = torch.randn(6, 4, requires_grad=True)
    p = logits.softmax(-1)
    labels = torch.tensor([0, 2, 2, 3, 0, 2])
    instance = torch.tensor([-1, 7, 7, 9, 5, 11])
    classes, scores = instance_mean_scores(p, labels, instance)
    assert classes.tolist() == [1, 2, 1] and not scores.requires_grad  # ids 7, 9, 11
    assert torch.allclose(scores[0], (p[1, 2] + p[2, 2]).detach() / 2)
    assert torch.allclose(scores[1], p[3, 3].detach()) and torch.allclose(scores[2], p[5, 2].detach())


def test_queue_is_fifo_and_never_exceeds_its_capacity():
    memory = FeatureMemory(3, (2,), queue_size=5)
    written = []
    for step in range(7):
        values = torch.arange(3.0) + 10 * step
        memory.enqueue(values[:, None].repeat(1, 2), torch.tensor([0, 0, 1]), torch.zeros(3, 4))
        written += values[:2].tolist()
        assert int(memory.counts.max()) <= 5
    assert memory.counts.tolist() == [5, 5, 0]
    # the five newest rows of class 0 are in the queue, in ring order
    assert sorted(memory.features[0, :, 0].tolist()) == sorted(written[-5:])
    big = FeatureMemory(1, (1,), queue_size=4)
    big.enqueue(torch.arange(9.0)[:, None], torch.zeros(9, dtype=torch.long), torch.zeros(9, 4))
    assert big.features[0, :, 0].tolist() == [0, 1, 2, 3]  # the official keeps the first queue_size rows


def test_only_non_empty_queues_are_sampled():
    memory = FeatureMemory(4, (3,), queue_size=8)
    memory.enqueue(torch.ones(5, 3), torch.tensor([1, 1, 3, 3, 3]), torch.zeros(5, 4))
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        features, labels, targets, drawn = memory.sample(torch.full((4,), 0.25), 8, 4, generator=g)
        assert set(labels.tolist()) <= {1, 3} and len(drawn) == 8
        assert len(labels) == 4 * int(((drawn == 1) | (drawn == 3)).sum()) and features.shape == (len(labels), 3)
        assert not features.requires_grad


def test_sampled_class_frequencies_follow_inverse_mean_score():
    m = torch.tensor([0.02, 0.05, 0.1, 0.3, 0.6])
    p = sampling_probabilities(m)
    assert torch.allclose(p, (1 / m) / (1 / m).sum(), atol=1e-5)
    memory = FeatureMemory(5, (1,), queue_size=4)
    memory.enqueue(torch.zeros(5, 1), torch.arange(5), torch.zeros(5, 4))
    g = torch.Generator().manual_seed(0)
    drawn = torch.cat([memory.sample(p, 8, 1, generator=g)[3] for _ in range(1000)])
    counts = torch.bincount(drawn, minlength=5).double()
    expected = p.double() / p.double().sum() * len(drawn)
    assert chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3


def test_jittered_boxes_move_each_corner_by_a_sixth_at_most():
    boxes = torch.tensor([[10.0, 10.0, 40.0, 34.0]])
    moved = jittered_boxes(boxes, 64, torch.Generator().manual_seed(0))
    assert moved.shape == (1, 16, 4) and SIGN_PATTERNS.unique(dim=0).shape == (16, 4)
    offset = moved[0] - boxes
    assert bool((offset.sign() * SIGN_PATTERNS >= 0).all())
    assert bool((offset[:, [0, 2]].abs() <= 30 / 6 + 1e-5).all()) and bool((offset[:, [1, 3]].abs() <= 24 / 6 + 1e-5).all())
