"""The study kit: a small library under one executable notebook per paper.

Importing ``kit`` is cheap on purpose: it loads only the profile and runtime helpers. Each
mechanism lives in its own module (``kit.det.assigners``, ``kit.data.shapes``, ...) and a
notebook imports exactly the modules it uses, so that a change to one mechanism marks only
the notebooks that use it as stale.
"""
from kit.profiles import PROFILES, profile, select
from kit.runtime import device_for, seed_everything, setup

__all__ = ["PROFILES", "profile", "select", "device_for", "seed_everything", "setup"]
__version__ = "0.1.0"
