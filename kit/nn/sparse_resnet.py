"""A small residual segmentation network with stochastic sparse sampling (arXiv 2003.08866).

Each bottleneck (1x1 reduce -> 3x3 -> 1x1 expand, plus the shortcut) gets two sampling masks,
one for the 1x1 reduce and one for the 3x3 conv, both predicted from the **block input**:
``p = sigmoid(conv3x3(x))``, one channel, bias initialised to 3 (p ~ 0.95, so training starts
almost dense). During training the mask is a Gumbel-sigmoid sample at a temperature that
decays (:mod:`kit.ops.gumbel`); the convolution's output is kept where the mask is on and
interpolated elsewhere (:func:`kit.ops.sparse_interp.interpolate`). At test time the mask is
sampled at T = 0.03, thresholded at 0.5, and the two convolutions are evaluated **only at
the sampled positions** (:func:`kit.ops.sparse_interp.sparse_conv2d`). A sparsity loss,
``0.25 mean(p1) + 0.75 mean(p2)`` per block (averaged over blocks, times a weight lambda),
trades accuracy for computation.

Follows ``Bottleneck`` / ``SparseResNet`` in zdaxie/SpatiallyAdaptiveInference-Detection
(grid prior every 11 pixels, 7x7 Gaussian, sigma learnable from 3). With ``sparse=False`` the
block is the plain dense bottleneck: the baseline with the same weights and widths. Our
network is tiny (a 3x3 stride-2 stem, a few bottlenecks at stride 2, a 1x1 classifier)
instead of a ResNet-101 detector, and its bottleneck expansion is 2 (orig. 4).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import Conv2dNormActivation

from kit.ops.gumbel import gumbel_sigmoid, threshold_mask
from kit.ops.sparse_interp import grid_prior, interpolate, sparse_conv2d
from kit.runtime import evaluating

__all__ = ["SparseBottleneck", "SparseSegNet", "TEST_TEMPERATURE", "conv_flops", "flop_report"]

TEST_TEMPERATURE = 0.03  # the official test-time temperature (noise is still added)


class SparseBottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 residual block; conv1 and conv2 sampled and interpolated when ``sparse``.

    forward(x (N, C, H, W), temperature, generator=None) -> (N, C, H, W). After a call,
    ``last`` holds the probabilities ``p1, p2`` and masks ``m1, m2`` (N, 1, H, W) (detached).
    """

    def __init__(self, channels: int, planes: int, sparse: bool = True, grid_interval: int = 11,
                 kernel_size: int = 7, mask_bias: float = 3.0):
        super().__init__()
        # conv (no bias) -> BN each; the ReLU is applied in forward, after the sparse evaluation
        self.conv1, self.conv2, self.conv3 = (Conv2dNormActivation(c_in, c_out, k, activation_layer=None)
                                              for c_in, c_out, k in ((channels, planes, 1), (planes, planes, 3),
                                                                     (planes, channels, 1)))
        self.sparse, self.grid_interval, self.kernel_size = sparse, grid_interval, kernel_size
        self.compute = "sparse"  # at test time: "sparse" (gathered positions) or "dense" (conv, then mask)
        self.last: dict = {}
        if sparse:
            self.mask1, self.mask2 = nn.Conv2d(channels, 1, 3, padding=1), nn.Conv2d(channels, 1, 3, padding=1)
            for conv in (self.mask1, self.mask2):
                nn.init.zeros_(conv.weight)
                nn.init.constant_(conv.bias, mask_bias)
            self.sigma1, self.sigma2 = nn.Parameter(torch.tensor(3.0)), nn.Parameter(torch.tensor(3.0))

    def _mask(self, probs, temperature, generator):
        """Training: the soft Gumbel-sigmoid sample. Test: T = 0.03 and thresholded. Grid prior on both."""
        if self.training:
            mask = gumbel_sigmoid(probs, temperature, generator=generator)
        else:
            mask = threshold_mask(gumbel_sigmoid(probs, TEST_TEMPERATURE, generator=generator))
        return grid_prior(mask, self.grid_interval)

    def _conv_bn_relu(self, layer: nn.Sequential, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        conv, norm = layer
        if mask is None or self.training or self.compute == "dense":
            return F.relu(norm(conv(x)))
        # test time: evaluate the convolution only where the mask is on (BN is then per-channel affine)
        return F.relu(norm(sparse_conv2d(x, conv.weight, mask, padding=conv.padding[0])))

    def forward(self, x: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.sparse:
            out = self._conv_bn_relu(self.conv2, self._conv_bn_relu(self.conv1, x, None), None)
            return F.relu(x + self.conv3(out))
        p1, p2 = torch.sigmoid(self.mask1(x)), torch.sigmoid(self.mask2(x))  # (N, 1, H, W), from the block input
        m1 = self._mask(p1, temperature, generator)
        out = interpolate(self._conv_bn_relu(self.conv1, x, m1), m1, self.sigma1, self.kernel_size)
        m2 = self._mask(p2, temperature, generator)
        out = interpolate(self._conv_bn_relu(self.conv2, out, m2), m2, self.sigma2, self.kernel_size)
        self.last = {"p1": p1, "p2": p2, "m1": m1.detach(), "m2": m2.detach()}
        return F.relu(x + self.conv3(out))

    def sparsity(self) -> torch.Tensor:
        """The official per-block term ``0.25 mean(p1) + 0.75 mean(p2)`` of the last call (uses p, not m)."""
        return 0.25 * self.last["p1"].mean() + 0.75 * self.last["p2"].mean()


class SparseSegNet(nn.Module):
    """Stem (3x3, stride 2) -> ``blocks`` bottlenecks -> 1x1 classifier -> bilinear upsampling x2.

    forward(images (N, 3, H, W), temperature=1.0, generator=None) -> logits (N, classes, H, W).
    """

    def __init__(self, num_classes: int, channels: int = 64, planes: int = 32, blocks: int = 4,
                 sparse: bool = True, grid_interval: int = 11):
        super().__init__()
        self.stem = Conv2dNormActivation(3, channels, 3, 2)
        self.blocks = nn.ModuleList(SparseBottleneck(channels, planes, sparse, grid_interval) for _ in range(blocks))
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.sparse = sparse

    def forward(self, images: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
        x = self.stem(images)  # (N, C, H/2, W/2)
        for block in self.blocks:
            x = block(x, temperature, generator)
        return F.interpolate(self.classifier(x), size=images.shape[-2:], mode="bilinear", align_corners=False)

    def set_compute(self, mode: str) -> None:
        """Test-time path of every block: ``"sparse"`` (only sampled positions) or ``"dense"``."""
        if mode not in ("sparse", "dense"):
            raise ValueError(f"compute must be 'sparse' or 'dense', got {mode!r}")
        for block in self.blocks:
            block.compute = mode

    def sparsity_loss(self) -> torch.Tensor:
        """Mean over blocks of the per-block term (times lambda outside); 0 for the dense network."""
        if not self.sparse:
            return self.classifier.weight.new_zeros(())
        return torch.stack([block.sparsity() for block in self.blocks]).mean()

    def densities(self) -> dict[str, list[float]]:
        """Per block, from the last call: the realised share of sampled positions (``m1``, ``m2``)
        and the expected share (mean probability, with the grid prior counted as sampled)."""
        if not self.sparse:
            raise ValueError("the dense network has no masks")
        out = {"m1": [], "m2": [], "p1": [], "p2": []}
        for block in self.blocks:
            for key in ("1", "2"):
                out["m" + key].append(float((block.last["m" + key] > 0).float().mean()))
                out["p" + key].append(float(grid_prior(block.last["p" + key].detach(), block.grid_interval).mean()))
        return out


def conv_flops(conv: nn.Conv2d, out_height: int, out_width: int) -> int:
    """FLOPs (2 per multiply-add) of a convolution evaluated at every output position, per image."""
    k_h, k_w = conv.kernel_size
    return 2 * out_height * out_width * conv.out_channels * (conv.in_channels // conv.groups) * k_h * k_w


@torch.no_grad()
def flop_report(model: SparseSegNet, images: torch.Tensor, generator: torch.Generator | None = None) -> dict:
    """FLOPs per image of one test-time pass: measured, and expected from the mask probabilities.

    ``real``: counted by :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and
    matrix products) while conv1/conv2 run at the sampled positions only; it includes the mask
    predictors and the interpolation. ``expected``: the same pass if every position were
    sampled with its probability ``p`` (what the sparsity loss controls): ``real`` minus the
    sampled conv1/conv2 FLOPs plus ``p``-weighted dense ones. For the dense network both equal
    the counted FLOPs.
    """
    with evaluating(model), FlopCounterMode(display=False) as counter:
        model(images, generator=generator)
    real = counter.get_total_flops() / images.shape[0]
    if not model.sparse:
        return {"real": real, "expected": real}
    densities = model.densities()
    realised = expected = 0.0
    for i, block in enumerate(model.blocks):
        h, w = block.last["m1"].shape[-2:]
        full1, full2 = conv_flops(block.conv1[0], h, w), conv_flops(block.conv2[0], h, w)
        realised += densities["m1"][i] * full1 + densities["m2"][i] * full2
        expected += densities["p1"][i] * full1 + densities["p2"][i] * full2
    return {"real": real, "expected": real - realised + expected, "densities": densities}
