"""Time the segmentation chapter's losses (P36) beside cross-entropy, and its search policy beside SciPy.

Losses: one forward and one backward on logits (8, 6, 64, 64) (a batch of the P36 page: six labels,
64-px images, about 10 % of the pixels labelled 255): ``F.cross_entropy`` (PyTorch, the baseline every
page uses), Lovász-softmax and soft Dice (``kit.seg.seg_losses``), and the Auto Seg-Loss surrogates
for mIoU and BF1 with the official searched control points (``kit.seg.auto_seg_loss``; BF1 at
tolerance 1 px, as the page). Policy: drawing 100 000 values of a 12-dimensional truncated normal and
their log densities, ``kit.hpo.truncated_normal_ppo`` against ``scipy.stats.truncnorm`` (with the
largest difference of the log densities). Threads: ``KIT_THREADS`` if set, else the cores available
(``kit.setup``). Runs in well under a minute.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

import kit
from kit.hpo.truncated_normal_ppo import TruncatedNormalPolicy
from kit.seg.auto_seg_loss import OFFICIAL_BF1_CONTROL_POINTS, OFFICIAL_MIOU_CONTROL_POINTS, auto_seg_loss
from kit.seg.seg_losses import dice_loss, lovasz_softmax
from _timing import loss_forward_backward, time_call  # bench/_timing.py, beside this script

SHAPE = (8, 6, 64, 64)
LOSSES = {
    "cross-entropy (torch)": lambda z, y: F.cross_entropy(z, y, ignore_index=255),
    "Lovasz-softmax": lovasz_softmax,
    "soft Dice": dice_loss,
    "ASL mIoU surrogate": lambda z, y: auto_seg_loss(z, y, OFFICIAL_MIOU_CONTROL_POINTS, "mIoU"),
    "ASL BF1 surrogate": lambda z, y: auto_seg_loss(z, y, OFFICIAL_BF1_CONTROL_POINTS, "BF1", tolerance=1),
}


def bench_losses(generator):
    logits = torch.randn(*SHAPE, generator=generator, requires_grad=True)
    labels = torch.randint(0, SHAPE[1], (SHAPE[0], *SHAPE[2:]), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.1] = 255
    print(f"Losses, logits {SHAPE}, forward + backward")
    baseline = None
    for name, loss in LOSSES.items():
        ms = 1000 * time_call(loss_forward_backward(loss, logits, labels), repeats=5)
        baseline = baseline or ms
        print(f"  {name:<24} {ms:>8.2f} ms   {ms / baseline:>5.1f}x cross-entropy")


def bench_policy(generator, draws=100_000):
    mu = np.linspace(0.2, 0.8, 12)
    policy = TruncatedNormalPolicy(mu, 0.2)
    a, b = (0 - mu) / 0.2, (1 - mu) / 0.2
    kit_sample = 1000 * time_call(lambda: policy.sample(draws, generator=generator, include_mean=False))
    scipy_sample = 1000 * time_call(lambda: stats.truncnorm.rvs(a, b, loc=mu, scale=0.2, size=(draws, 12),
                                                                random_state=0))
    theta = policy.sample(draws, generator=generator, include_mean=False)
    with torch.no_grad():
        kit_logpdf = 1000 * time_call(lambda: policy.log_prob(theta))
        difference = float(np.abs(policy.log_prob(theta).numpy()
                                  - stats.truncnorm.logpdf(theta.numpy(), a, b, loc=mu, scale=0.2)).max())
    scipy_logpdf = 1000 * time_call(lambda: stats.truncnorm.logpdf(theta.numpy(), a, b, loc=mu, scale=0.2))
    print(f"Truncated normal, {draws:,} draws x 12 dimensions")
    print(f"  sample   kit {kit_sample:>7.2f} ms   scipy {scipy_sample:>7.2f} ms")
    print(f"  log pdf  kit {kit_logpdf:>7.2f} ms   scipy {scipy_logpdf:>7.2f} ms   max |difference| {difference:.1e}")


def main():
    kit.setup(0)
    print(f"{torch.get_num_threads()} thread(s)")
    generator = torch.Generator().manual_seed(0)
    bench_losses(generator)
    bench_policy(generator)


if __name__ == "__main__":
    main()
