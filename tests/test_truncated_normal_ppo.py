"""The truncated-normal search policy and its PPO2 step (kit.hpo.truncated_normal_ppo):
density and samples against SciPy's truncnorm, the mean first, the clipped objective, and a
search that climbs a known reward."""
import numpy as np
import pytest
import torch
from scipy import stats

from kit.hpo.truncated_normal_ppo import TruncatedNormalPolicy


def test_log_prob_agrees_with_scipy_truncnorm():
    mu, sigma = np.array([0.25, 0.5, 0.9]), np.array([0.2, 0.1, 0.3])
    policy = TruncatedNormalPolicy(mu, torch.tensor(sigma))
    x = np.array([[0.0, 0.3, 0.99], [0.6, 0.5, 0.1], [1.0, 0.01, 0.5]])
    expected = stats.truncnorm.logpdf(x, (0 - mu) / sigma, (1 - mu) / sigma, loc=mu, scale=sigma)
    np.testing.assert_allclose(policy.log_prob(torch.tensor(x)).detach().numpy(), expected, rtol=1e-9)
    assert float(policy.log_prob(torch.tensor([[1.1, 0.5, 0.5]])).detach()[0, 0]) == -np.inf


def test_samples_follow_the_truncated_normal_and_start_with_the_mean():
    policy = TruncatedNormalPolicy([0.2, 0.7], 0.2)
    samples = policy.sample(4001, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(samples[0], policy.mu.detach())
    assert bool(((samples >= 0) & (samples <= 1)).all())
    for d, m in enumerate((0.2, 0.7)):
        a, b = (0 - m) / 0.2, (1 - m) / 0.2
        assert stats.kstest(samples[1:, d].numpy(), stats.truncnorm(a, b, loc=m, scale=0.2).cdf).pvalue > 0.01


def test_ppo_objective_starts_at_the_mean_advantage_and_clipping_stops_the_gain():
    policy = TruncatedNormalPolicy([0.5], 0.2)
    theta = torch.tensor([[0.5], [0.8], [0.2]], dtype=torch.float64)
    rewards = torch.tensor([0.0, 1.0, -1.0])
    objectives = policy.ppo_update(theta, rewards, updates=200, lr=0.05, clip=0.2)
    assert objectives[0] == pytest.approx((0 + 1 - 1) / 3)        # ratio 1 at the first step
    # the good sample's ratio is capped at 1 + eps, the bad one's counted no lower than 1 - eps:
    # (0 + 1.2 * 1 - 0.8 * 1) / 3 is the most the clipped objective can reach
    assert max(objectives) <= 0.4 / 3 + 1e-9 and objectives[-1] == pytest.approx(0.4 / 3, abs=1e-6)
    assert float(policy.mu.detach()) > 0.5                                   # moved towards the rewarded sample


def test_a_small_search_climbs_a_known_reward():
    target = torch.tensor([0.8, 0.3, 0.6], dtype=torch.float64)
    policy = TruncatedNormalPolicy([0.5, 0.5, 0.5], 0.2)
    generator = torch.Generator().manual_seed(1)
    start = float(((policy.mu.detach() - target) ** 2).sum())
    for _ in range(12):                                             # the official 12 rounds of 32
        theta = policy.sample(32, generator=generator)
        rewards = -((theta - target) ** 2).sum(dim=1)
        policy.ppo_update(theta, rewards, updates=20, lr=0.05)
    # the squared distance of mu to the best theta: 0.14 -> at most 0.073 over generator seeds 0-19
    assert float(((policy.mu.detach() - target) ** 2).sum()) < 0.6 * start

