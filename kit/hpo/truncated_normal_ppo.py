"""A search policy over parameters in [0, 1]: a truncated normal, improved by PPO2's clipped step.

Auto Seg-Loss (P36) searches its curves' parameters ``theta`` this way (``ASL_search/
autoloss_ppo_bezier.py`` and ``truncated_normal.py`` of ``fundamentalvision/Auto-Seg-Loss``):

- The policy is a product of independent normals ``N(mu_d, sigma_d)`` truncated to [0, 1],
  with ``mu = sigmoid(mu_x)`` (``mu_x`` is what the optimiser moves) and ``sigma`` fixed (0.2).
  Samples come from the inverse CDF: ``u ~ U(0, 1)``,
  ``x = mu + sigma Phi^-1(Phi(alpha) + u (Phi(beta) - Phi(alpha)))``, ``alpha = -mu / sigma``,
  ``beta = (1 - mu) / sigma``.
- A round draws ``S`` samples, the first being ``mu`` itself; each is scored by a reward (the
  target metric of a proxy network trained with that sample). The advantage is
  ``r_s - r_0``: the mean's own reward is the baseline.
- Then ``updates`` Adam steps (lr 0.2) on the PPO2 objective (Schulman et al. 2017) with clip
  ``eps = 0.2``. As the official code, the probability ratio is taken **per dimension**
  (``exp(log p_new(theta_sd) - log p_old(theta_sd))``, shape (S, D)), the clipped objective
  ``min(ratio A, clip(ratio, 1 - eps, 1 + eps) A)`` is averaged over samples and summed over
  dimensions: each coordinate moves as its own one-dimensional policy.
"""
from __future__ import annotations

import math

import torch


def standard_normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(z / math.sqrt(2)))


class TruncatedNormalPolicy:
    """Independent normals truncated to [low, high]; ``mu`` is learned through ``mu_x``.

    ``mu (D,)`` in (low, high) open, ``sigma`` a positive float or (D,) tensor."""

    def __init__(self, mu, sigma=0.2, low: float = 0.0, high: float = 1.0):
        if not high > low:
            raise ValueError(f"high must exceed low, got low={low}, high={high}")
        mu = torch.as_tensor(mu, dtype=torch.float64).reshape(-1)
        if not bool(((mu > low) & (mu < high)).all()):
            raise ValueError(f"mu must lie strictly inside ({low}, {high}), got {mu.tolist()}")
        sigma = torch.as_tensor(sigma, dtype=torch.float64).expand_as(mu).clone()
        if not bool((sigma > 0).all()):
            raise ValueError(f"sigma must be > 0, got {sigma.tolist()}")
        self.low, self.high, self.sigma = low, high, sigma
        unit = (mu - low) / (high - low)
        self.mu_x = torch.log(unit / (1 - unit)).requires_grad_()     # (D,): mu = low + (high-low) sigmoid(mu_x)

    @property
    def mu(self) -> torch.Tensor:
        return self.low + (self.high - self.low) * self.mu_x.sigmoid()

    def bounds(self, mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised truncation points ``alpha``, ``beta`` (D,)."""
        return (self.low - mu) / self.sigma, (self.high - mu) / self.sigma

    def log_prob(self, theta: torch.Tensor) -> torch.Tensor:
        """Per-dimension log density of samples ``theta (S, D)`` -> (S, D); -inf outside the bounds."""
        mu = self.mu
        alpha, beta = self.bounds(mu)
        z = (theta - mu) / self.sigma
        log_density = -0.5 * z * z - 0.5 * math.log(2 * math.pi) - torch.log(self.sigma)
        log_mass = torch.log(standard_normal_cdf(beta) - standard_normal_cdf(alpha))
        inside = (theta >= self.low) & (theta <= self.high)
        return torch.where(inside, log_density - log_mass, torch.full_like(log_density, -math.inf))

    def sample(self, num_samples: int, generator: torch.Generator | None = None,
               include_mean: bool = True) -> torch.Tensor:
        """``num_samples`` draws (S, D) by the inverse CDF; the first is ``mu`` itself if
        ``include_mean`` (the round's baseline)."""
        if not isinstance(num_samples, int) or num_samples < (2 if include_mean else 1):
            raise ValueError(f"num_samples must be an int >= {2 if include_mean else 1}, got {num_samples!r}")
        with torch.no_grad():
            mu = self.mu
            alpha, beta = self.bounds(mu)
            draws = num_samples - 1 if include_mean else num_samples
            u = torch.rand(draws, mu.numel(), dtype=mu.dtype, generator=generator)     # (S', D)
            lower = standard_normal_cdf(alpha)
            p = lower + u * (standard_normal_cdf(beta) - lower)
            tiny = torch.finfo(p.dtype).eps
            z = math.sqrt(2) * torch.erfinv((2 * p - 1).clamp(-1 + tiny, 1 - tiny))
            samples = (mu + self.sigma * z).clamp(self.low, self.high)
            return torch.cat([mu.reshape(1, -1), samples]) if include_mean else samples

    def ppo_update(self, theta: torch.Tensor, rewards: torch.Tensor, updates: int = 60, lr: float = 0.2,
                   clip: float = 0.2) -> list[float]:
        """PPO2 steps on a round's samples ``theta (S, D)`` (row 0 = the old mu) and their
        ``rewards (S,)``; advantage ``r - r_0``. Returns the objective before each step."""
        theta = torch.as_tensor(theta, dtype=torch.float64)
        rewards = torch.as_tensor(rewards, dtype=torch.float64).reshape(-1)
        if theta.dim() != 2 or theta.shape[1] != self.mu_x.numel() or rewards.numel() != theta.shape[0]:
            raise ValueError(f"theta must be (S, {self.mu_x.numel()}) and rewards (S,), got "
                             f"{tuple(theta.shape)} and {tuple(rewards.shape)}")
        outside = int((~((theta >= self.low) & (theta <= self.high))).sum())  # NaN counts as outside
        if outside:
            raise ValueError(f"theta must be samples in [{self.low}, {self.high}] (the policy's support), "
                             f"got {outside} values outside it or NaN")
        if not bool(torch.isfinite(rewards).all()):
            raise ValueError("rewards must be finite")
        if not clip > 0:
            raise ValueError(f"clip must be > 0, got {clip}")
        advantage = (rewards - rewards[0]).reshape(-1, 1)                            # (S, 1)
        with torch.no_grad():
            old_log_prob = self.log_prob(theta)                                      # (S, D)
        optimizer = torch.optim.Adam([self.mu_x], lr=lr)
        objectives = []
        for _ in range(updates):
            ratio = (self.log_prob(theta) - old_log_prob).exp()                     # (S, D)
            objective = torch.minimum(ratio * advantage, ratio.clamp(1 - clip, 1 + clip) * advantage)
            objective = objective.mean(dim=0).sum()
            objectives.append(float(objective.detach()))
            optimizer.zero_grad()
            (-objective).backward()
            optimizer.step()
        return objectives
