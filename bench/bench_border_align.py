"""Time BorderAlign (kit.ops.border_align) at the sizes the BorderDet notebook trains with.

For each FPN level of a 96 px and a 128 px image (strides 8/16/32), batch 16, C = 64 border
channels: the forward alone (no autograd) and forward + backward at pool_size 10 (the
paper's), and forward + backward at pool_size 5. The cost is linear in the number of samples,
batch x 4 sides x C x locations x (pool_size + 1). Threads: ``KIT_THREADS`` if set, else the
cores available (``kit.setup``). Runs in ~10 s on a quiet 2-core machine.
"""
from __future__ import annotations


import torch

import kit
from kit.ops.border_align import border_align
from _timing import time_call  # bench/_timing.py, beside this script


def best_of(fn, repeats=3) -> float:
    return 1000 * time_call(fn, repeats)  # ms


def random_boxes(batch, h, w, generator):
    corner = torch.rand(batch, h * w, 2, generator=generator) * torch.tensor([w - 1.0, h - 1.0])
    size = torch.rand(batch, h * w, 2, generator=generator) * torch.tensor([w / 2, h / 2])
    return torch.cat([corner, torch.minimum(corner + size, torch.tensor([w - 1.0, h - 1.0]))], -1)


def main():
    kit.setup(0)
    generator = torch.Generator().manual_seed(0)
    batch, channels = 16, 64
    print(f"BorderAlign, batch {batch}, C = {channels}, pool_size 10, {torch.get_num_threads()} thread(s)")
    print(f"{'image':>6} {'level':>6} {'map':>6} {'samples':>9} {'forward':>9} {'fwd+bwd':>9} {'fwd+bwd, pool 5':>16}")
    total = {"forward": 0.0, "train": 0.0, "pool5": 0.0}
    for image in (96, 128):
        for level, stride in enumerate((8, 16, 32)):
            h = w = image // stride
            input = torch.randn(batch, 4 * channels, h, w, generator=generator, requires_grad=True)
            boxes = random_boxes(batch, h, w, generator)
            forward = best_of(lambda: border_align(input.detach(), boxes))
            train = best_of(lambda: border_align(input, boxes).sum().backward())
            pool5 = best_of(lambda: border_align(input, boxes, pool_size=5).sum().backward())
            total["forward"] += forward
            total["train"] += train
            total["pool5"] += pool5
            samples = batch * 4 * channels * h * w * 11
            print(f"{image:>5}px {'P' + str(level + 3):>6} {f'{h}x{w}':>6} {samples / 1e6:>8.1f}M "
                  f"{forward:>7.1f}ms {train:>7.1f}ms {pool5:>14.1f}ms")
    print(f"all six levels: forward {total['forward']:.0f} ms, forward+backward {total['train']:.0f} ms "
          f"(pool_size 5: {total['pool5']:.0f} ms)")


if __name__ == "__main__":
    main()
