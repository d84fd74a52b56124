"""Time the kit's two-product RoIAlign (kit.ops.roi_align) beside torchvision's kernel, forward + backward.

The shapes of the kit's pages: a stride-16 map of a 128 px image (8 x 8 cells, 64 channels),
batch 8, and 16 to 256 boxes per image (the two-stage pages sample 16-128 RoIs per image; Sparse
R-CNN pools 16-32 proposals per stage), 7 x 7 bins, sampling ratio 2, ``aligned=True``; then one
16 x 16 map. Each call is one forward and one backward with the same upstream gradient; also the
largest difference between the two results. Threads: ``KIT_THREADS`` if set, else the cores
available (``kit.setup``). Runs in about ten seconds.
"""
from __future__ import annotations

import torch
from torchvision.ops import roi_align as tv_roi_align

import kit
from kit.ops.roi_align import roi_align
from _timing import time_call  # bench/_timing.py, beside this script


def problem(side: int, boxes_per_image: int, generator: torch.Generator):
    features = torch.randn(8, 64, side, side, generator=generator, requires_grad=True)
    boxes = []
    for _ in range(8):
        corner = torch.rand(boxes_per_image, 2, generator=generator) * side * 16 * 0.8
        size = torch.rand(boxes_per_image, 2, generator=generator) * side * 16 * 0.5 + 4
        boxes.append(torch.cat([corner, corner + size], 1))
    return features, boxes


def forward_backward(op, features, boxes, upstream):
    def call():
        features.grad = None
        op(features, boxes, 7, 1 / 16, 2, True).backward(upstream)
    return call


def main():
    kit.setup(0)
    generator = torch.Generator().manual_seed(0)
    print(f"RoIAlign 7x7, sampling 2, aligned, batch 8, 64 channels, forward + backward, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"{'map':>6} {'boxes/img':>10} {'kit':>10} {'torchvision':>12} {'ratio':>6} {'max |diff|':>11}")
    for side, per_image in ((8, 16), (8, 64), (8, 256), (16, 32)):
        features, boxes = problem(side, per_image, generator)
        upstream = torch.randn(8 * per_image, 64, 7, 7, generator=generator)
        with torch.no_grad():
            difference = float((roi_align(features, boxes, 7, 1 / 16, 2, True)
                                - tv_roi_align(features, boxes, 7, 1 / 16, 2, True)).abs().max())
        kit_ms = 1000 * time_call(forward_backward(roi_align, features, boxes, upstream))
        tv_ms = 1000 * time_call(forward_backward(tv_roi_align, features, boxes, upstream))
        print(f"{side:>4}^2 {per_image:>10} {kit_ms:>8.1f}ms {tv_ms:>10.1f}ms {kit_ms / tv_ms:>5.2f}x {difference:>11.1e}")
    print("ratio: kit / torchvision (below 1: the kit is faster)")


if __name__ == "__main__":
    main()
