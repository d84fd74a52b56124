"""Time PSRoIAlign, the kit's pure-torch version (kit.ops.ps_roi_align) beside torchvision's kernel.

Light-Head R-CNN's setting: a thin map of 490 = 10 x 7 x 7 channels at stride 16 (a batch of 2
images of 320 px, a 20 x 20 map), 7 x 7 bins, 2 x 2 samples per bin, at 16, 128 and 512 RoIs per
batch; the forward alone (no autograd) and forward + backward (gradient to the map). Also the
adaptive sampling ratio (-1) at 128 RoIs. Threads: ``KIT_THREADS`` if set, else the cores available
(``kit.setup``). Runs in a few seconds on a quiet 2-core machine.
"""
from __future__ import annotations

import torch
from torchvision.ops import ps_roi_align as tv_ps_roi_align

import kit
from kit.ops.ps_roi_align import ps_roi_align
from _timing import time_call  # bench/_timing.py, beside this script


def best_of(fn, repeats=3) -> float:
    return 1000 * time_call(fn, repeats)  # ms


def random_rois(num_rois, num_images, image, generator):
    """(K, 5) rois in image pixels: 16 to 160 px boxes anywhere on the image."""
    size = 16 + 144 * torch.rand(num_rois, 2, generator=generator)
    corner = torch.rand(num_rois, 2, generator=generator) * (image - size)
    batch_index = torch.randint(0, num_images, (num_rois, 1), generator=generator).float()
    return torch.cat([batch_index, corner, corner + size], 1)


def main():
    kit.setup(0)
    generator = torch.Generator().manual_seed(0)
    batch, image, stride, bins, out_channels = 2, 320, 16, 7, 10
    features = torch.randn(batch, out_channels * bins * bins, image // stride, image // stride,
                           generator=generator, requires_grad=True)
    print(f"PSRoIAlign, map {tuple(features.shape)}, {bins}x{bins} bins, {torch.get_num_threads()} thread(s)")
    print(f"{'RoIs':>5} {'sampling':>9} {'kit fwd':>9} {'tv fwd':>9} {'kit fwd+bwd':>12} {'tv fwd+bwd':>11} {'ratio':>6}")
    for num_rois, sampling_ratio in ((16, 2), (128, 2), (512, 2), (128, -1)):
        rois = random_rois(num_rois, batch, image, generator)
        args = (rois, bins, 1 / stride, sampling_ratio)
        kit_fwd = best_of(lambda: ps_roi_align(features.detach(), *args))
        tv_fwd = best_of(lambda: tv_ps_roi_align(features.detach(), *args))
        kit_train = best_of(lambda: ps_roi_align(features, *args).sum().backward())
        tv_train = best_of(lambda: tv_ps_roi_align(features, *args).sum().backward())
        print(f"{num_rois:>5} {sampling_ratio:>9} {kit_fwd:>7.1f}ms {tv_fwd:>7.1f}ms {kit_train:>10.1f}ms "
              f"{tv_train:>9.1f}ms {kit_train / tv_train:>5.1f}x")
    print("ratio: kit / torchvision, forward + backward")


if __name__ == "__main__":
    main()
