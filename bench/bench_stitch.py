"""Time Stitcher's ``stitch4`` at CPU-scale sizes (one thread), against the network step it feeds.

Prints milliseconds per call (median of repeats) for a tensor batch (one vectorised resize)
and for a list of mixed-size images (one resize per image, as the official collate), and
the share of a stitched batch's cost in a dense-detector training step of the same size.
Runs in well under 30 s.
"""
from __future__ import annotations

import time

import torch

from kit.det.stitch import stitch4
from _timing import time_call  # bench/_timing.py, beside this script


def median_ms(fn, repeats: int = 15) -> float:
    return 1000 * time_call(fn, repeats, reduce="median")


def targets(count: int, size: int, per_image: int = 4):
    g = torch.Generator().manual_seed(0)
    boxes = []
    for _ in range(count):
        xy = torch.rand(per_image, 2, generator=g) * size * 0.6
        boxes.append(torch.cat([xy, xy + torch.rand(per_image, 2, generator=g) * size * 0.3 + 2], 1))
    return boxes, [torch.zeros(per_image, dtype=torch.long) for _ in range(count)]


def main() -> None:
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread")
    print(f"{'input':<34}{'output':<22}{'ms / call':>10}")
    for size, batch in [(64, 16), (96, 16), (128, 16), (256, 8)]:
        images = torch.rand(4 * batch, 3, size, size)
        boxes, labels = targets(4 * batch, size)
        ms = median_ms(lambda: stitch4(images, boxes, labels, size_divisible=32))
        out = f"{batch} x 3 x {size} x {size}"
        print(f"{f'tensor {4 * batch} x 3 x {size} x {size}':<34}{out:<22}{ms:>10.2f}")
    g = torch.Generator().manual_seed(1)
    for size, batch in [(96, 16), (256, 8)]:
        sizes = torch.randint(size // 2, size + 1, (4 * batch, 2), generator=g).tolist()
        images = [torch.rand(3, h, w) for h, w in sizes]
        boxes, labels = targets(4 * batch, size // 2)
        ms = median_ms(lambda: stitch4(images, boxes, labels, size_divisible=32))
        print(f"{f'list of {4 * batch} mixed <= {size} px':<34}{f'{batch} x 3 x {size} x {size}':<22}{ms:>10.2f}")

    # Against the step it feeds: a dense detector (ATSS head) forward + backward at 96 px, batch 16.
    from kit.det.atss import ATSSHead
    from kit.det.detector import dense_detector

    model = dense_detector(ATSSHead, 6, 64, seed=0)
    images = torch.rand(64, 3, 96, 96)
    boxes, labels = targets(64, 96)
    stitched, s_boxes, s_labels = stitch4(images, boxes, labels)

    def step():
        loss = sum(model.loss(stitched, s_boxes, s_labels).values())
        loss.backward()

    step_ms = median_ms(step, repeats=5)
    stitch_ms = median_ms(lambda: stitch4(images, boxes, labels))
    print(f"\n96 px, batch 16: stitch4 {stitch_ms:.2f} ms vs a training step {step_ms:.0f} ms "
          f"({100 * stitch_ms / step_ms:.1f}% overhead)")


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - started:.1f} s")
