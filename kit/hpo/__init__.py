"""Hyper-parameter optimisation and search policies.

- ``rbf_search`` — surrogate-based search over integer hyper-parameters.
- ``truncated_normal_ppo`` — a truncated-normal policy over parameters in [0, 1], improved by
  PPO2's clipped step (Auto Seg-Loss' search, P36; reusable by the architecture-search papers).
"""
