"""Equalization loss (kit.det.equalization_loss): the invariants of EQL's definition, checked
against torch's own binary cross-entropy and autograd."""
import torch
import torch.nn.functional as F

from kit.det.equalization_loss import (binary_targets, class_gradients, eql_weights, equalization_loss,
                                       sigmoid_cross_entropy, softmax_cross_entropy, suppression_threshold)

C = 6
FREQUENCY = torch.tensor([0.5, 0.2, 0.05, 0.01, 0.004, 0.001])  # frequent ... rare


def _batch(seed=0, rois=40):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rois, C, generator=g) * 2
    labels = torch.randint(0, C + 1, (rois,), generator=g)
    labels[:5] = 0  # some background for sure
    return logits, labels


def test_binary_targets_drop_the_background_column():
    y = binary_targets(torch.tensor([0, 1, 3]), 4)
    assert torch.equal(y, torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]], dtype=torch.float32))


def test_lambda_zero_is_sigmoid_cross_entropy_of_torch():
    logits, labels = _batch()
    expected = F.binary_cross_entropy_with_logits(logits, binary_targets(labels, C), reduction="sum") / len(labels)
    assert torch.allclose(equalization_loss(logits, labels, FREQUENCY, 0.0), expected, atol=1e-6)
    assert torch.allclose(sigmoid_cross_entropy(logits, labels), expected, atol=1e-6)


def test_background_rois_keep_every_weight():
    logits, labels = _batch()
    w = eql_weights(labels, FREQUENCY, 0.1)
    assert torch.equal(w[labels == 0], torch.ones_like(w[labels == 0]))


def test_foreground_rois_send_no_negative_gradient_to_rare_classes_and_keep_their_positive():
    logits, labels = _batch(1)
    lam = 0.02  # protects the classes of frequency 0.01, 0.004, 0.001 (columns 3, 4, 5)
    z = logits.clone().requires_grad_()
    equalization_loss(z, labels, FREQUENCY, lam).backward()
    z_bce = logits.clone().requires_grad_()
    sigmoid_cross_entropy(z_bce, labels).backward()
    rare = FREQUENCY < lam
    foreground = labels > 0
    y = binary_targets(labels, C).bool()
    discouraging = foreground[:, None] & rare[None, :] & ~y  # (R, C)
    assert discouraging.any()
    assert torch.all(z.grad[discouraging] == 0)
    # everything else is untouched: positives, background rows, frequent classes
    assert torch.allclose(z.grad[~discouraging], z_bce.grad[~discouraging], atol=1e-7)


def test_eql_never_exceeds_bce_and_the_suppressed_set_grows_with_lambda():
    logits, labels = _batch(2)
    bce = F.binary_cross_entropy_with_logits(logits, binary_targets(labels, C), reduction="none")
    previous = torch.zeros(C)
    for lam in (0.0, 0.002, 0.02, 0.1, 0.3, 1.0):
        w = eql_weights(labels, FREQUENCY, lam)
        assert torch.all(w * bce <= bce)
        suppressed = suppression_threshold(FREQUENCY, lam)
        assert torch.all(suppressed >= previous)  # monotone in lambda
        previous = suppressed
    assert previous.sum() == C  # lambda = 1 protects every class


def test_class_gradients_equal_autograd_times_the_number_of_rois():
    logits, labels = _batch(3)
    lam = 0.02
    z = logits.clone().requires_grad_()
    equalization_loss(z, labels, FREQUENCY, lam).backward()
    grad = z.grad * len(labels)  # undo the 1/N
    y = binary_targets(labels, C)
    positive, negative = class_gradients(logits, labels, eql_weights(labels, FREQUENCY, lam))
    assert torch.allclose(positive, (grad.abs() * y).sum(0), atol=1e-5)
    assert torch.allclose(negative, (grad.abs() * (1 - y)).sum(0), atol=1e-5)


def test_softmax_cross_entropy_is_torchs():
    g = torch.Generator().manual_seed(4)
    logits, labels = torch.randn(30, C + 1, generator=g), torch.randint(0, C + 1, (30,), generator=g)
    assert torch.allclose(softmax_cross_entropy(logits, labels), F.cross_entropy(logits, labels))


def test_no_rois_give_a_zero_that_keeps_the_graph():
    z = torch.zeros(0, C, requires_grad=True)
    loss = equalization_loss(z, torch.zeros(0, dtype=torch.long), FREQUENCY, 0.1)
    loss.backward()
    assert float(loss) == 0 and z.grad.shape == (0, C)
