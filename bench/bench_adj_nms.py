"""Time the kit's TSD pooling and soft-NMS beside the library ops they stand next to.

1. ``kit.ops.delta_roi_align`` (grid_sample, per-bin offsets) beside ``torchvision.ops.roi_align``
   (no offsets, no gradient to the boxes): a batch of 8 maps of 64 channels, 8 x 8 cells (128 px at
   stride 16, the P10 page), 7 x 7 bins, 2 x 2 samples, at 128 and 1200 RoIs (training and test
   counts of that page); forward alone and forward + backward.
2. ``kit.det.adj_nms.soft_nms`` (a greedy Python loop over an IoU matrix) and ``adj_nms`` beside
   ``torchvision.ops.batched_nms`` (C++), one image's detections of 6 classes, 100 to 2000 boxes.
Threads: ``KIT_THREADS`` if set, else the cores available (``kit.setup``). A few seconds.
"""
from __future__ import annotations

import torch
from torchvision.ops import batched_nms, roi_align

import kit
from kit.det.adj_nms import adj_nms, soft_nms
from kit.ops.delta_roi_align import delta_roi_align
from _timing import time_call  # bench/_timing.py, beside this script


def best_of(fn, repeats=3) -> float:
    return 1000 * time_call(fn, repeats)  # ms


def random_boxes(n, image, generator):
    corner = torch.rand(n, 2, generator=generator) * image * 0.75
    return torch.cat([corner, corner + 8 + torch.rand(n, 2, generator=generator) * image * 0.25], 1)


def main():
    kit.setup(0)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(8, 64, 8, 8, generator=generator, requires_grad=True)
    print(f"1. RoI pooling, map {tuple(features.shape)}, 7x7 bins, 2x2 samples, {torch.get_num_threads()} thread(s)")
    print(f"{'RoIs':>5} {'kit fwd':>9} {'tv fwd':>9} {'kit fwd+bwd':>12} {'tv fwd+bwd':>11}")
    for num_rois in (128, 1200):
        boxes = [random_boxes(num_rois // 8, 128, generator) for _ in range(8)]
        offsets = (0.1 * torch.randn(num_rois, 2, 7, 7, generator=generator)).requires_grad_(True)
        kit_fwd = best_of(lambda: delta_roi_align(features.detach(), boxes, offsets.detach()))
        tv_fwd = best_of(lambda: roi_align(features.detach(), boxes, 7, 1 / 16, 2, aligned=True))
        kit_train = best_of(lambda: delta_roi_align(features, boxes, offsets).sum().backward())
        tv_train = best_of(lambda: roi_align(features, boxes, 7, 1 / 16, 2, aligned=True).sum().backward())
        print(f"{num_rois:>5} {kit_fwd:>7.1f}ms {tv_fwd:>7.1f}ms {kit_train:>10.1f}ms {tv_train:>9.1f}ms")
    print("\n2. NMS of one image's detections (6 classes)")
    print(f"{'boxes':>6} {'tv batched_nms':>15} {'kit soft_nms':>13} {'kit adj_nms':>12}")
    for n in (100, 500, 2000):
        boxes = random_boxes(n, 128, generator)
        scores, labels = torch.rand(n, generator=generator), torch.randint(0, 6, (n,), generator=generator)
        hard = best_of(lambda: batched_nms(boxes, scores, labels, 0.5))
        soft = best_of(lambda: soft_nms(boxes, scores, labels, 0.5), repeats=1)
        adj = best_of(lambda: adj_nms(boxes, scores, labels, 0.5, 0.5), repeats=1)
        print(f"{n:>6} {hard:>13.2f}ms {soft:>11.1f}ms {adj:>10.1f}ms")
    print("soft-NMS loops once per kept box in Python; adj-NMS runs it only on hard NMS's survivors")


if __name__ == "__main__":
    main()
