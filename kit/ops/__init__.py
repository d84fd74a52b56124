"""Operators that papers invent: deformable sampling, attention variants, gates, samplers."""
