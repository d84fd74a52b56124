"""Light-Head R-CNN's second stage (Li et al., arXiv 1711.07264) and the R-FCN head it slims.

Both heads pool each proposal with position-sensitive RoIAlign (:mod:`kit.ops.ps_roi_align`):
bin ``(i, j)`` of a 7 x 7 grid reads only its own group of channels, so the pooled RoI comes out
already arranged by part and the cost per RoI is small. They differ in what the map holds and in
what follows the pooling.

:class:`RFCNHead` (R-FCN, Dai et al., arXiv 1605.06409): a 1 x 1 conv makes ``(C + 1) p^2``
*score maps* (one group per bin per class, background included) and ``4 p^2`` box maps; after
pooling, each class's 49 bins are averaged ("voting") into its logit, and the box maps likewise
into one class-agnostic delta. No layer runs per RoI, but the map grows with the number of classes
(3969 channels for COCO's 81 at p = 7).

:class:`LightHeadHead`: a *large separable convolution* makes a *thin* map of ``alpha p^2``
channels whatever the number of classes (alpha = 10: 490 channels), PSRoIAlign pools it to
``(R, alpha, p, p)``, and one fully connected layer (2048 in the paper) feeds the classifier and
the box regressor. The large separable conv is two branches of spatially factorised *full* convs
(not depthwise), ``k x 1 -> 1 x k`` and ``1 x k -> k x 1``, summed and then passed through a ReLU
(``global_context_module`` in the official TF code: k = 15, 256 middle channels, 64 for the small
model). Each branch sees a k x k window, so every thin-map cell already carries context from far
across the object before any per-RoI work.

Choices at the kit's scale, said where the notebook uses them:

* Both heads read the same stride-16 map as the RPN (the kit's two-stage detector has one map);
  the paper runs its head on a dilated C5 at stride 16 and the RPN on C4.
* Both pool with ``torchvision.ops.ps_roi_align`` (``sampling_ratio=2``, the 2 x 2 samples per bin of
  the official ``psalign_pool``); the kit's pure-torch :func:`kit.ops.ps_roi_align.ps_roi_align`
  is the same op, written to be read, and tested against it. R-FCN's paper pools (no bilinear
  samples); pooling both heads alike leaves only the head design different.
* Light-Head's box regression is class-specific (4 per class) as in the official code; R-FCN's is
  class-agnostic (4 p^2 box maps), as in its paper and code.
* R-FCN's 1 x 1 convs start N(0, 0.01), biases 0 (its official code), the predictors as every
  :class:`kit.det.roi_heads.RoIHead`. The large separable conv starts from He's N(0, 2 / fan-in)
  instead of the official N(0, 0.01): at the paper's width (2048 channels in, fan-in 2048 * 15)
  0.01 keeps the signal's scale (a gain of ~1.75 on the first conv), but at the kit's fan-in of
  64 * 15 the two stacked convs would shrink it about tenfold, and the thin map would start
  near zero.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import ps_roi_align

from kit.det.roi_heads import RoIHead, feature_stride

__all__ = ["LargeSeparableConv", "RFCNHead", "LightHeadHead"]


def _conv(in_channels: int, out_channels: int, kernel: tuple[int, int], std: float | None = 0.01) -> nn.Conv2d:
    """A full conv of a (kh, kw) kernel, 'same' padding, bias 0; weights N(0, std), or He's
    N(0, 2 / fan-in) for ``std=None``."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, padding=(kernel[0] // 2, kernel[1] // 2))
    if std is None:
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")  # std sqrt(2 / (in * kh * kw))
    else:
        nn.init.normal_(conv.weight, std=std)
    nn.init.zeros_(conv.bias)
    return conv


def _check_positive_ints(**values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")


class LargeSeparableConv(nn.Module):
    """Two factorised k x k branches summed, then ReLU: (B, in, h, w) -> (B, out, h, w).

    branch 1: k x 1 (in -> mid), then 1 x k (mid -> out); branch 2: 1 x k (in -> mid), then k x 1
    (mid -> out). No activation inside a branch (as the official code). k must be odd, so the
    'same' padding keeps the map's size.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int = 64, kernel_size: int = 15):
        super().__init__()
        _check_positive_ints(in_channels=in_channels, out_channels=out_channels, mid_channels=mid_channels,
                             kernel_size=kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (so the map keeps its size), got {kernel_size}")
        k = kernel_size
        self.kernel_size = k
        # He initialisation (see the module docstring): N(0, 0.01) would shrink a narrow map ~10x
        self.vertical_first = nn.Sequential(_conv(in_channels, mid_channels, (k, 1), None),
                                            _conv(mid_channels, out_channels, (1, k), None))
        self.horizontal_first = nn.Sequential(_conv(in_channels, mid_channels, (1, k), None),
                                              _conv(mid_channels, out_channels, (k, 1), None))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.vertical_first(features) + self.horizontal_first(features))  # (B, out, h, w)


def _ps_pool(maps: torch.Tensor, proposals: list[torch.Tensor], image_size, pooled_size: int,
             sampling_ratio: int) -> torch.Tensor:
    """PSRoIAlign of every proposal: (B, G p^2, h, w) -> (R, G, p, p)."""
    scale = 1.0 / feature_stride(maps, image_size)
    # at least float32 (half-precision pixel coordinates are off by ~0.5 px); float64 stays float64
    work = maps if maps.dtype in (torch.float32, torch.float64) else maps.float()
    boxes = [p.to(work.dtype) for p in proposals]
    return ps_roi_align(work, boxes, pooled_size, scale, sampling_ratio).to(maps.dtype)


class RFCNHead(RoIHead):
    """Position-sensitive score maps and average voting: no layer per RoI, class-agnostic boxes.

    features (B, in, h, w) -> [1 x 1 conv to ``hidden_channels``, ReLU] -> score maps (B, (C+1) p^2, h, w)
    and box maps (B, 4 p^2, h, w) -> PSRoIAlign (R, C+1, p, p), (R, 4, p, p) -> mean over the p^2
    bins -> logits (R, C+1), deltas (R, 4). ``hidden_channels=None`` skips the reducing conv (the
    official code's ``conv_new_1``, 2048 -> 1024, on res5).
    """

    def __init__(self, num_classes: int, in_channels: int, pooled_size: int = 7, hidden_channels: int | None = None,
                 sampling_ratio: int = 2):
        super().__init__(num_classes, in_channels, class_agnostic=True)
        _check_positive_ints(pooled_size=pooled_size, sampling_ratio=sampling_ratio)
        if hidden_channels is not None:
            _check_positive_ints(hidden_channels=hidden_channels)
        self.pooled_size, self.sampling_ratio = pooled_size, sampling_ratio
        width = in_channels if hidden_channels is None else hidden_channels
        self.reduce = nn.Identity() if hidden_channels is None else nn.Sequential(_conv(in_channels, width, (1, 1)), nn.ReLU())
        bins = pooled_size ** 2
        self.score_maps = _conv(width, (num_classes + 1) * bins, (1, 1))
        self.box_maps = _conv(width, 4 * bins, (1, 1))

    def forward(self, features: torch.Tensor, proposals: list[torch.Tensor], image_size: tuple[int, int]):
        hidden = self.reduce(features)
        scores = _ps_pool(self.score_maps(hidden), proposals, image_size, self.pooled_size, self.sampling_ratio)
        boxes = _ps_pool(self.box_maps(hidden), proposals, image_size, self.pooled_size, self.sampling_ratio)
        return scores.mean(dim=(2, 3)), boxes.mean(dim=(2, 3))  # (R, C + 1) by voting, (R, 4)


class LightHeadHead(RoIHead):
    """Thin map from a large separable conv, PSRoIAlign, one fc: the cost per RoI ignores C.

    features (B, in, h, w) -> :class:`LargeSeparableConv` -> thin map (B, alpha p^2, h, w) ->
    PSRoIAlign (R, alpha, p, p) -> flatten (R, alpha p^2) -> fc ``fc_channels`` + ReLU -> logits
    (R, C+1), deltas (R, 4C). Paper: alpha 10, p 7, k 15, mid 256 (64 small), fc 2048.
    """

    def __init__(self, num_classes: int, in_channels: int, alpha: int = 10, pooled_size: int = 7,
                 mid_channels: int = 64, kernel_size: int = 15, fc_channels: int = 256, sampling_ratio: int = 2,
                 class_agnostic: bool = False):
        super().__init__(num_classes, in_channels, class_agnostic)
        _check_positive_ints(alpha=alpha, pooled_size=pooled_size, fc_channels=fc_channels, sampling_ratio=sampling_ratio)
        self.alpha, self.pooled_size, self.sampling_ratio = alpha, pooled_size, sampling_ratio
        self.thin_map = LargeSeparableConv(in_channels, alpha * pooled_size ** 2, mid_channels, kernel_size)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(alpha * pooled_size ** 2, fc_channels), nn.ReLU())
        self.classifier, self.regressor = self.predictors(fc_channels)

    def forward(self, features: torch.Tensor, proposals: list[torch.Tensor], image_size: tuple[int, int]):
        pooled = _ps_pool(self.thin_map(features), proposals, image_size, self.pooled_size, self.sampling_ratio)
        hidden = self.fc(pooled)  # (R, fc_channels)
        return self.classifier(hidden), self.regressor(hidden)  # (R, C + 1), (R, 4K)
