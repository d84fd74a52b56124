"""Time the long-tail chapter's classification losses (P09) beside torch's, and the detector's step.

Losses: one forward and one backward on the logits of a P09 batch (16 images x 128 sampled RoIs =
2 048 RoIs, 30 classes, a quarter of them foreground): ``F.cross_entropy`` over C + 1 columns and
``F.binary_cross_entropy_with_logits`` (PyTorch), then the kit's softmax and sigmoid baselines and the
equalization loss (``kit.det.equalization_loss``), and the per-class gradient statistics the page
accumulates every step. Detector: one training step of ``kit.det.region_detector.RegionDetector`` at the
page's size (proposals, RoI sampling, forward, backward), softmax and sigmoid heads. Threads:
``KIT_THREADS`` if set, else the cores available (``kit.setup``). Runs in well under a minute.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import kit
from kit.data.longtail_scenes import LongTailSceneConfig, generate
from kit.det import equalization_loss as eql
from kit.det.region_detector import RegionDetector, region_proposals
from _timing import loss_forward_backward, time_call  # bench/_timing.py, beside this script

ROIS, CLASSES = 2048, 30


def bench_losses(generator):
    labels = torch.randint(1, CLASSES + 1, (ROIS,), generator=generator)
    labels[torch.rand(ROIS, generator=generator) < 0.75] = 0  # three quarters background
    frequency = torch.logspace(-0.3, -2.5, CLASSES)  # frequent ... rare
    soft = torch.randn(ROIS, CLASSES + 1, generator=generator, requires_grad=True)
    sig = torch.randn(ROIS, CLASSES, generator=generator, requires_grad=True)
    targets = eql.binary_targets(labels, CLASSES)
    rows = [("cross-entropy, C + 1 (torch)", lambda z, y: F.cross_entropy(z, y), soft),
            ("BCE with logits (torch)", lambda z, y: F.binary_cross_entropy_with_logits(z, targets, reduction="sum") / ROIS, sig),
            ("kit softmax_cross_entropy", eql.softmax_cross_entropy, soft),
            ("kit sigmoid_cross_entropy", eql.sigmoid_cross_entropy, sig),
            ("kit equalization_loss", lambda z, y: eql.equalization_loss(z, y, frequency, 0.02), sig)]
    print(f"Classification losses, {ROIS} RoIs x {CLASSES} classes, forward + backward")
    baseline = None
    for name, loss, logits in rows:
        ms = 1000 * time_call(loss_forward_backward(loss, logits, labels), repeats=20)
        baseline = baseline or ms
        print(f"  {name:<30} {ms:>7.3f} ms   {ms / baseline:>5.1f}x torch cross-entropy")
    ms = 1000 * time_call(lambda: eql.class_gradients(sig, labels, eql.eql_weights(labels, frequency, 0.02)), repeats=20)
    print(f"  {'kit class_gradients (+ weights)':<30} {ms:>7.3f} ms")


def bench_detector_step():
    scenes = generate(LongTailSceneConfig(num_images=64, image_size=64, num_classes=CLASSES, p_miss=0.0, seed=5))
    images, boxes, labels = scenes.batch(range(16))
    print("RegionDetector training step, 16 images of 64 px, 30 classes")
    for scoring, loss in (("softmax", eql.softmax_cross_entropy), ("sigmoid", eql.sigmoid_cross_entropy)):
        torch.manual_seed(0)
        model = RegionDetector(CLASSES, loss, scoring)
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
        generator = torch.Generator().manual_seed(0)

        def step():
            losses = model.loss(images, boxes, labels, region_proposals(boxes, 64, generator=generator))
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
        ms = 1000 * time_call(step, repeats=10, reduce="median")
        print(f"  {scoring:<8} {ms:>7.1f} ms per step")


def main():
    kit.setup(0)
    print(f"{torch.get_num_threads()} thread(s)")
    bench_losses(torch.Generator().manual_seed(0))
    bench_detector_step()


if __name__ == "__main__":
    main()
