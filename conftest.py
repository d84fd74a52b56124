"""pytest configuration shared by the unit tests and nbval.

Notebooks run by nbval inherit pytest's environment, so setting the profile here makes a
bare ``pytest`` run every notebook at the smoke profile (``make test`` sets it explicitly).

The oneDNN cap is the Makefile's (see there and ``tests/test_onednn_cap.py``): a bare
``pytest`` on an AVX-512 CPU would otherwise crash in a strided 1x1 convolution's backward.
oneDNN reads it when it first dispatches a kernel, so setting it here, before any test or
kernel runs a convolution, is in time.
"""
import os

os.environ.setdefault("KIT_PROFILE", "smoke")
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
