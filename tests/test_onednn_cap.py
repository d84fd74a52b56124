"""The oneDNN cap that keeps strided 1x1 convolutions from crashing (see the Makefile).

On AVX-512 CPUs, torch 2.14.1's oneDNN corrupts the heap computing the weight gradient of a
1x1 stride-2 convolution on a channels_last map with few channels; the kit's backbones have
exactly that shortcut at the smoke widths. The convolution runs in a subprocess, so that a
crash fails this test with its exit code instead of killing the whole pytest run.
"""
import os
import subprocess
import sys

SCRIPT = """
import torch
torch.manual_seed(0)
conv = torch.nn.Conv2d(8, 8, 1, stride=2, bias=False)
x = torch.randn(2, 8, 48, 48)
grad_out = torch.randn(2, 8, 24, 24)
conv(x).backward(grad_out)                       # contiguous (NCHW): the reference
reference = conv.weight.grad.clone()
conv.weight.grad = None
conv_cl = conv.to(memory_format=torch.channels_last)
for _ in range(5):                                # the crash is not always on the first call
    conv.weight.grad = None
    conv_cl(x.contiguous(memory_format=torch.channels_last)).backward(
        grad_out.contiguous(memory_format=torch.channels_last))
torch.testing.assert_close(conv.weight.grad, reference, rtol=1e-4, atol=1e-4)
print("agree")
"""


def test_strided_1x1_weight_gradient_in_channels_last_runs_and_agrees_with_nchw():
    env = dict(os.environ)
    assert env.get("ONEDNN_MAX_CPU_ISA"), "conftest.py sets the cap; it is missing from the environment"
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "agree" in done.stdout, (
        f"exit code {done.returncode} with ONEDNN_MAX_CPU_ISA={env['ONEDNN_MAX_CPU_ISA']}: "
        f"{done.stderr[-2000:]}")
