"""Hyper-parameter optimisation: surrogate-based search over integer hyper-parameters."""
