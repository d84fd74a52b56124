"""A tiny FCN-style segmenter: the segmentation chapter's baseline (P23, P24, P33, P36).

Fully convolutional networks (Long, Shelhamer & Darrell, CVPR 2015) classify every pixel with
convolutions only and upsample the coarse scores to the input size; FCN-8s fuses the scores of
finer stages on the way up. Here the encoder is :class:`kit.nn.backbone.TinyResNet` (C2..C5 at
strides 4, 8, 16, 32) and the decoder is the top-down path of an FPN (Lin et al. 2017), the
"light decoder" the chapter's studies ask for: a 1x1 lateral per stage, upsample-and-add from C5
down to C2, one 3x3 conv, a 1x1 classifier at stride 4 and a bilinear upsampling to full
resolution (``align_corners=False``, as mmsegmentation's ``resize``). Orig. FCN: VGG-16, score
layers fused at strides 32/16/8 and learned deconvolutions.

Logits have ``num_classes + 1`` channels: label 0 is background, 1..num_classes the objects of
the dataset's label space (:attr:`kit.data.seg_scenes.SegSceneConfig.num_labels` channels). The
loss is per-pixel cross-entropy averaged over the pixels whose target is not 255, as
``F.cross_entropy(..., ignore_index=255)``, except that a batch with every pixel ignored gives
0 (with a gradient of zeros) instead of NaN.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kit.nn.backbone import TinyResNet, conv_bn_relu
from kit.runtime import evaluating

IGNORE_INDEX = 255  # kit.data.seg_scenes.IGNORE_INDEX


def segmentation_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy over the non-ignored pixels; logits (B, L, H, W), targets (B, H, W) long."""
    if logits.dim() != 4 or targets.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"logits must be (B, L, H, W) and targets (B, H, W) of the same B, H, W; "
                         f"got {tuple(logits.shape)} and {tuple(targets.shape)}")
    if targets.dtype != torch.long:
        raise TypeError(f"targets must be long class ids (SegScenes.batch gives them), got {targets.dtype}")
    valid = targets != ignore_index  # (B, H, W)
    if valid.any() and (targets[valid].min() < 0 or targets[valid].max() >= logits.shape[1]):
        raise ValueError(f"targets must be label ids in [0, {logits.shape[1]}) or {ignore_index} (ignored), "
                         f"got values in [{int(targets[valid].min())}, {int(targets[valid].max())}]")
    total = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    return total / valid.sum().clamp(min=1)


class TinyFCN(nn.Module):
    """TinyResNet (C2..C5) + top-down decoder -> logits (B, num_classes + 1, H, W)."""

    def __init__(self, num_classes: int, widths=(16, 32, 64, 128), decoder_channels: int = 32,
                 channels_last: bool = True):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int):
            raise TypeError(f"num_classes (object classes, background not counted) must be an int, "
                            f"got {type(num_classes).__name__}")
        if num_classes < 1:
            raise ValueError(f"num_classes (object classes, background not counted) must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.backbone = TinyResNet(widths, num_outputs=4)  # C2..C5, strides 4..32
        self.lateral = nn.ModuleList(nn.Conv2d(c, decoder_channels, 1) for c in self.backbone.out_channels)
        self.fuse = conv_bn_relu(decoder_channels, decoder_channels)
        self.classifier = nn.Conv2d(decoder_channels, num_classes + 1, 1)
        # channels-last memory: faster small CPU convolutions (as kit.det.detector measured)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) float in [0, 1] -> logits (B, num_classes + 1, H, W)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"images must be float in [0, 1], got {images.dtype} (uint8 pixels: images.float() / 255)")
        features = self.backbone(images.contiguous(memory_format=self.memory_format))  # [(B, C_s, H/s, W/s)]
        x = self.lateral[-1](features[-1])  # (B, D, H/32, W/32)
        for feature, lateral in zip(features[-2::-1], list(self.lateral)[-2::-1]):  # C4, C3, C2
            x = F.interpolate(x, size=feature.shape[-2:], mode="bilinear", align_corners=False) + lateral(feature)
        logits = self.classifier(self.fuse(x))  # (B, L, H/4, W/4)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def loss(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (ignore 255) of a batch: images (B, 3, H, W), targets (B, H, W) long."""
        return segmentation_loss(self(images), targets)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Label ids (B, H, W) long, the argmax of the logits, in eval mode without autograd."""
        with evaluating(self):
            return self(images).argmax(1)
