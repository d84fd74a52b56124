import math

import pytest
import torch

from kit.ops.gumbel import gumbel_sigmoid, gumbel_softmax, temperature_at, threshold_mask


def official_form(probs, temperature, u1, u2, eps=1e-8):
    """The official GumbelSigmoid.forward, written out: a two-way softmax of noisy log-probabilities."""
    x = torch.log(probs + eps) - torch.log(-torch.log(u1 + eps) + eps)
    r = torch.log(1 - probs + eps) - torch.log(-torch.log(u2 + eps) + eps)
    return torch.softmax(torch.stack([x, r]) / (temperature + eps), dim=0)[0]


def test_matches_the_official_two_way_softmax_with_the_same_noise():
    probs = torch.rand(3, 1, 5, 5)
    sample = gumbel_sigmoid(probs, 0.7, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    u1, u2 = torch.rand(probs.shape, generator=g), torch.rand(probs.shape, generator=g)
    assert torch.allclose(sample, official_form(probs, 0.7, u1, u2), atol=1e-6)
    assert sample.min() > 0 and sample.max() < 1


def test_hard_masks_are_binary_with_the_soft_gradient():
    probs = torch.rand(4, 1, 6, 6).requires_grad_()
    weights = torch.randn(4, 1, 6, 6)
    hard = gumbel_sigmoid(probs, 0.5, hard=True, generator=torch.Generator().manual_seed(1))
    assert set(hard.detach().unique().tolist()) <= {0.0, 1.0}
    (grad_hard,) = torch.autograd.grad((hard * weights).sum(), probs)
    soft = gumbel_sigmoid(probs, 0.5, generator=torch.Generator().manual_seed(1))
    (grad_soft,) = torch.autograd.grad((soft * weights).sum(), probs)
    assert torch.equal(hard.detach(), (soft.detach() >= 0.5).float())
    assert torch.allclose(grad_hard, grad_soft)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_mean_of_samples_matches_the_expected_probability(p):
    n = 200_000
    probs = torch.full((n,), p, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    tolerance = 4 * math.sqrt(p * (1 - p) / n)  # 4 standard errors
    # hard samples are Bernoulli(p): their mean is p
    assert abs(gumbel_sigmoid(probs, 1.0, hard=True, generator=g).mean().item() - p) < tolerance
    # the soft sample at T = 1 has mean E[sigmoid(logit p + L)], L ~ Logistic(0, 1), by quadrature
    u = (torch.arange(1_000_000, dtype=torch.float64) + 0.5) / 1_000_000
    expected = torch.sigmoid(math.log(p / (1 - p)) + torch.log(u / (1 - u))).mean().item()
    assert abs(gumbel_sigmoid(probs, 1.0, generator=g).mean().item() - expected) < tolerance
    # and at a low temperature the soft sample is nearly binary, with mean p
    assert abs(gumbel_sigmoid(probs, 0.03, generator=g).mean().item() - p) < tolerance


def test_extreme_probabilities_and_threshold():
    probs = torch.tensor([0.0, 1.0])
    sample = gumbel_sigmoid(probs, 0.03, generator=torch.Generator().manual_seed(0))
    assert sample[0] < 1e-6 and sample[1] > 1 - 1e-6
    assert threshold_mask(torch.tensor([0.2, 0.5, 0.75])).tolist() == [0.0, 0.5, 0.75]


def test_hard_gumbel_softmax_is_one_hot_forward_with_the_soft_gradient():
    """The straight-through estimator: the forward value is the one-hot argmax of the soft sample
    (drawn from the same noise), the gradient is the soft sample's."""
    logits = torch.randn(5, 4, requires_grad=True)
    weights = torch.randn(5, 4)
    torch.manual_seed(3)
    hard = gumbel_softmax(logits, tau=0.5, hard=True)
    torch.manual_seed(3)
    soft = gumbel_softmax(logits, tau=0.5, hard=False)
    assert torch.equal(hard.sum(-1), torch.ones(5)) and set(hard.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(hard.argmax(-1), soft.argmax(-1))
    (grad_hard,) = torch.autograd.grad((hard * weights).sum(), logits)
    (grad_soft,) = torch.autograd.grad((soft * weights).sum(), logits)
    torch.testing.assert_close(grad_hard, grad_soft)


def test_temperature_schedule_and_bad_inputs():
    assert temperature_at(0) == 1.0
    assert abs(temperature_at(100, 1.0, 0.1 ** (1 / 100)) - 0.1) < 1e-12
    with pytest.raises(ValueError, match="probabilities"):
        gumbel_sigmoid(torch.tensor([-0.5, 2.0]))
    with pytest.raises(ValueError, match="temperature"):
        gumbel_sigmoid(torch.tensor([0.5]), temperature=-1)
    with pytest.raises(ValueError, match="decay"):
        temperature_at(3, 1.0, 1.5)
