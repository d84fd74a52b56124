"""pytest configuration shared by the unit tests and nbval.

Notebooks run by nbval inherit pytest's environment, so setting the profile here makes a
bare ``pytest`` run every notebook at the smoke profile (``make test`` sets it explicitly).
"""
import os

os.environ.setdefault("KIT_PROFILE", "smoke")
