"""Time P16's per-RoI weighted EQL beside plain sigmoid BCE and P09's EQL, and the ignore weights.

Losses: one forward and one backward on logits (2048, 30) (a P16 training step: 16 images x 128
sampled RoIs, 30 classes, about a quarter foreground): ``F.binary_cross_entropy_with_logits`` on
one-hot targets (PyTorch, the baseline), ``kit.det.equalization_loss.sigmoid_cross_entropy`` and
``equalization_loss`` (P09), and ``kit.det.missing_annotations.weighted_equalization_loss`` with
about 5 % of the RoIs ignored (P16). Then the per-image ``ignore_weights`` of 128 RoIs against 8 aux
boxes, for the 16 images of a step. Threads: ``KIT_THREADS`` if set, else the cores available
(``kit.setup``). Runs in a few seconds.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

import kit
from kit.det.equalization_loss import binary_targets, equalization_loss, sigmoid_cross_entropy
from kit.det.missing_annotations import ignore_weights, weighted_equalization_loss
from _timing import loss_forward_backward, time_call  # bench/_timing.py, beside this script

ROIS, CLASSES = 2048, 30


def bench_losses(generator):
    logits = torch.randn(ROIS, CLASSES, generator=generator, requires_grad=True)
    labels = torch.randint(1, CLASSES + 1, (ROIS,), generator=generator)
    labels[torch.rand(ROIS, generator=generator) < 0.75] = 0
    frequency = torch.rand(CLASSES, generator=generator) * 0.5
    lam = float(frequency.median())
    weights = (torch.rand(ROIS, generator=generator) > 0.05).float()
    losses = {
        "BCE (torch, one-hot)": lambda z, y: F.binary_cross_entropy_with_logits(z, binary_targets(y, CLASSES),
                                                                                reduction="sum") / len(y),
        "sigmoid BCE (kit)": sigmoid_cross_entropy,
        "EQL (P09)": functools.partial(equalization_loss, image_frequency=frequency, lam=lam),
        "weighted EQL (P16)": lambda z, y: weighted_equalization_loss(z, y, frequency, lam, weights),
    }
    print(f"Losses, logits ({ROIS}, {CLASSES}), forward + backward")
    baseline = None
    for name, loss in losses.items():
        ms = 1000 * time_call(loss_forward_backward(loss, logits, labels), repeats=20)
        baseline = baseline or ms
        print(f"  {name:<24} {ms:>8.3f} ms   {ms / baseline:>5.1f}x torch BCE")


def bench_ignore(generator, images=16, rois=128, aux=8, size=64.0):
    def boxes(n):
        xy = torch.rand(n, 2, generator=generator) * size * 0.7
        return torch.cat([xy, xy + 4 + torch.rand(n, 2, generator=generator) * size * 0.3], 1)
    batch = [(boxes(rois), torch.zeros(rois, dtype=torch.long), boxes(aux), torch.randint(0, CLASSES, (aux,), generator=generator),
              torch.rand(CLASSES, generator=generator) < 0.3) for _ in range(images)]
    ms = 1000 * time_call(lambda: [ignore_weights(*row) for row in batch], repeats=20)
    print(f"ignore_weights, {images} images x {rois} RoIs x {aux} aux boxes: {ms:.3f} ms per step")


def main():
    kit.setup(0)
    print(f"{torch.get_num_threads()} thread(s)")
    generator = torch.Generator().manual_seed(0)
    bench_losses(generator)
    bench_ignore(generator)


if __name__ == "__main__":
    main()
