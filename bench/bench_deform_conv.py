"""Time deformable convolutions against a plain conv at the sizes the CPU notebooks use.

Forward + backward of one 3x3 layer, batch 32, for: a rigid ``nn.Conv2d``; DCNv2 through
torchvision's kernel and through the kit's plain-PyTorch form (what ``DeformConv2d`` runs on
the CPU); the depthwise versions (rigid, DCN, Deformable Kernels with a 4x4 scope). Prints
milliseconds per step and the slowdown against the rigid conv. Runs in about 20 s on 1 thread.

    KIT_THREADS=1 python bench/bench_deform_conv.py
"""
from __future__ import annotations

import time

import torch
from torch import nn

import kit
from kit.ops.deform_conv import DeformConv2d
from kit.ops.deformable_kernels import DeformableKernel2d

BATCH = 32
SHAPES = [(32, 16), (64, 8)]  # (channels, map size): the notebooks' last stages at 64 px input
BUDGET_SECONDS = 0.4  # per measurement, after one warm-up step


def step_ms(layer: nn.Module, x: torch.Tensor) -> float:
    """Median milliseconds of forward + backward over as many steps as fit the budget (>= 3)."""
    layer(x).sum().backward()  # warm-up
    times = []
    began = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - began < BUDGET_SECONDS:
        start = time.perf_counter()
        layer(x).sum().backward()
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def layers_for(channels: int) -> dict:
    def dcn(backend, groups=1, modulated=True):
        layer = DeformConv2d(channels, channels, 3, padding=1, groups=groups, modulated=modulated, backend=backend)
        nn.init.normal_(layer.offset_conv.weight, std=0.01)  # non-trivial offsets
        return layer

    dk = DeformableKernel2d(channels, 3, scope_size=4, padding=1)
    nn.init.normal_(dk.kernel_offset_conv.weight, std=0.01)
    return {
        "conv 3x3 (rigid)": nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        "DCNv2, torchvision kernel": dcn("torchvision"),
        "DCNv2, kit plain torch": dcn("torch"),
        "depthwise 3x3 (rigid)": nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
        "depthwise DCNv1, kit": dcn("torch", groups=channels, modulated=False),
        "depthwise DK (scope 4), kit": dk,
    }


def main() -> None:
    kit.setup(0)
    print(f"deformable conv bench: batch {BATCH}, forward + backward, {torch.get_num_threads()} thread(s), "
          f"torch {torch.__version__}")
    for channels, size in SHAPES:
        x = torch.randn(BATCH, channels, size, size, requires_grad=True)
        print(f"\n{channels} channels, {size}x{size} map")
        rigid = None
        for name, layer in layers_for(channels).items():
            ms = step_ms(layer, x)
            if name.endswith("(rigid)"):
                rigid = ms
            print(f"  {name:30s} {ms:8.2f} ms  ({ms / rigid:5.1f}x the rigid conv above)")


if __name__ == "__main__":
    main()
