"""The Learnable Tree Filter in a segmentation decoder, and a non-local block in the same slot (P24).

Song et al., "Learnable Tree Filter for Structure-preserving Feature Transform" (NeurIPS 2019,
arXiv 1909.12513) insert the tree filter (:mod:`kit.ops.tree_filter`) where a top-down decoder fuses
a coarse, semantically strong map with a finer stage: the coarse map is smoothed along a minimum
spanning tree of the *finer* stage before the two are added, so that it spreads inside regions the
fine features separate and not across their boundaries.

The wiring follows the official VOC network (StevenGrove/TreeFilter-Torch,
``model/voc/voc.fcn_32d.R50_v1c.tree_filter/network.py``), at each top-down fusion::

    latent = latent_layer(C_s)                 # the finer stage, projected (no BN, no ReLU there)
    tree   = MST(latent)                       # low-level guide: builds the tree, no gradient
    embed  = embed_layer(previous)             # high-level embedding: 1x1 conv of the upsampled map
    fusion = latent + TF(previous, embed, tree)   # groups = 16, distance ||e_k - e_m||^2, unscaled

with no normalisation or residual around the filter (the filter *replaces* the identity path of
a plain top-down sum), a 1x1 ``refine_layer`` after it and the filter at every fusion (strides 16,
8 and 4 of a stride-32 backbone). Choices here: the network is :class:`kit.seg.models.TinyFCN`
unchanged (its 1x1 laterals play the latents, official 3x3; no extra 1x1 refine, which the plain
network does not have either), so that the plain network *is* the baseline and the two differ only
by the filter; the embedding has as many channels as the decoder (official: 256 = 256).

The second baseline puts a non-local block (Wang et al., "Non-local Neural Networks", CVPR 2018;
embedded Gaussian) in the same slot: ``z = x + W_z softmax(theta(x)^T phi(x)) g(x)`` over all
positions of the upsampled coarse map, inner width C/2, ``W_z`` zero-initialised so the block
starts as the identity (the paper zero-initialises the BN after ``W_z``; there is no BN here), no
sub-sampling of ``phi`` and ``g`` (the maps are tiny). Orig. non-local: in the backbone's res4.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kit.ops.tree_filter import GridTree, grid_mst, tree_filter
from kit.seg.models import TinyFCN

__all__ = ["PlainFusion", "TreeFilterFusion", "NonLocalBlock", "NonLocalFusion", "TreeFilterFCN", "AGGREGATORS"]

AGGREGATORS = ("plain", "tree_filter", "non_local")


def _check_pair(previous, latent) -> None:
    for name, tensor in (("previous", previous), ("latent", latent)):
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4:
            raise ValueError(f"{name} must be a (B, C, H, W) tensor, got "
                             f"{tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__}")
    if previous.shape != latent.shape:
        raise ValueError(f"previous {tuple(previous.shape)} and latent {tuple(latent.shape)} must have one shape "
                         f"(the coarse map is upsampled to the finer stage first)")


class PlainFusion(nn.Module):
    """The plain top-down sum: ``latent + previous`` (TinyFCN's decoder)."""

    def forward(self, previous: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        _check_pair(previous, latent)
        return latent + previous


class TreeFilterFusion(nn.Module):
    """``latent + TF(previous, embed(previous), MST(latent))``; both maps (B, C, H, W)."""

    def __init__(self, channels: int, groups: int = 16, scale: float = 1.0):
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be an int >= 1, got {channels!r}")
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or channels % groups:
            raise ValueError(f"groups must be an int >= 1 that divides channels ({channels}), got {groups!r}")
        self.groups, self.scale = groups, scale
        self.embed = nn.Conv2d(channels, channels, 1, bias=False)  # official embed_layer: 1x1, no BN/ReLU

    def filter_inputs(self, previous: torch.Tensor, latent: torch.Tensor) -> tuple[torch.Tensor, GridTree]:
        """The embedding (B, C, H, W) of ``previous`` and the MST of ``latent`` (no gradient)."""
        _check_pair(previous, latent)
        return self.embed(previous), grid_mst(latent.detach())

    def forward(self, previous: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        embed, tree = self.filter_inputs(previous, latent)
        return latent + tree_filter(previous.contiguous(), embed.contiguous(), tree, self.groups, self.scale)


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block: ``x + W_z softmax(theta^T phi) g`` over the H * W positions."""

    def __init__(self, channels: int, inner: int | None = None):
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be an int >= 1, got {channels!r}")
        inner = max(1, channels // 2) if inner is None else inner
        if isinstance(inner, bool) or not isinstance(inner, int) or inner < 1:
            raise ValueError(f"inner must be an int >= 1, got {inner!r}")
        self.theta, self.phi, self.g = (nn.Conv2d(channels, inner, 1) for _ in range(3))
        self.out = nn.Conv2d(inner, channels, 1)
        nn.init.zeros_(self.out.weight)  # starts as the identity (Wang et al.: zero-init of the last BN)
        nn.init.zeros_(self.out.bias)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, N) softmax over j of theta(x_i) . phi(x_j); row i sums to 1."""
        theta = self.theta(x).flatten(2)  # (B, inner, N)
        phi = self.phi(x).flatten(2)
        return torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"x must be a (B, C, H, W) tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        batch, _, height, width = x.shape
        values = self.g(x).flatten(2)  # (B, inner, N)
        y = values @ self.attention(x).transpose(1, 2)  # (B, inner, N): y_i = sum_j a_ij g_j
        return x + self.out(y.reshape(batch, -1, height, width))


class NonLocalFusion(nn.Module):
    """``latent + NL(previous)``: the non-local block in the tree filter's slot."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = NonLocalBlock(channels)

    def forward(self, previous: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        _check_pair(previous, latent)
        return latent + self.block(previous.contiguous())


class TreeFilterFCN(TinyFCN):
    """TinyFCN whose top-down fusions (C4, C3, C2) use ``aggregator``: "plain" (= TinyFCN),
    "tree_filter" (the LTF, official wiring) or "non_local"; ``stages`` picks which fusions get it
    (0 = C4 at stride 16, 1 = C3, 2 = C2 at stride 4; official: all), the others stay plain."""

    def __init__(self, num_classes: int, aggregator: str = "tree_filter", widths=(16, 32, 64, 128),
                 decoder_channels: int = 32, groups: int = 16, stages=(0, 1, 2), channels_last: bool = True):
        if aggregator not in AGGREGATORS:
            raise ValueError(f"aggregator must be one of {AGGREGATORS}, got {aggregator!r}")
        stages = tuple(stages)
        if not stages or any(isinstance(s, bool) or s not in (0, 1, 2) for s in stages):
            raise ValueError(f"stages must be a non-empty tuple of fusion indices in (0, 1, 2), got {stages!r}")
        super().__init__(num_classes, widths, decoder_channels, channels_last=False)
        self.aggregator, self.stages = aggregator, stages
        make = {"plain": lambda: PlainFusion(), "tree_filter": lambda: TreeFilterFusion(decoder_channels, groups),
                "non_local": lambda: NonLocalFusion(decoder_channels)}
        self.fusions = nn.ModuleList(make[aggregator if s in stages else "plain"]() for s in range(3))
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    def decode(self, images: torch.Tensor, keep: bool = False):
        """Logits (B, L, H/4, W/4) and, if ``keep``, per fusion its (previous, latent) inputs."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"images must be float in [0, 1], got {images.dtype} (uint8 pixels: images.float() / 255)")
        features = self.backbone(images.contiguous(memory_format=self.memory_format))  # C2..C5
        x = self.lateral[-1](features[-1])  # (B, D, H/32, W/32)
        kept = []
        stages = zip(features[-2::-1], list(self.lateral)[-2::-1], self.fusions)  # C4, C3, C2
        for feature, lateral, fusion in stages:
            previous = F.interpolate(x, size=feature.shape[-2:], mode="bilinear", align_corners=False)
            latent = lateral(feature)  # (B, D, H/s, W/s)
            if keep:
                kept.append((previous, latent))
            x = fusion(previous, latent)
        return self.classifier(self.fuse(x)), kept

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) float in [0, 1] -> logits (B, num_classes + 1, H, W)."""
        logits, _ = self.decode(images)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def fusion_inputs(self, images: torch.Tensor, stage: int = 2) -> dict:
        """What fusion ``stage`` sees for these images: previous, latent and, for the tree filter,
        its embedding and tree (eval mode, no autograd)."""
        was_training = self.training
        self.eval()
        try:
            _, kept = self.decode(images, keep=True)
        finally:
            self.train(was_training)
        previous, latent = kept[stage]
        out = {"previous": previous.contiguous(), "latent": latent.contiguous()}
        fusion = self.fusions[stage]
        if isinstance(fusion, TreeFilterFusion):
            embed, out["tree"] = fusion.filter_inputs(out["previous"], out["latent"])
            out["embed"] = embed.contiguous()
        if isinstance(fusion, NonLocalFusion):
            out["attention"] = fusion.block.attention(out["previous"])
        return out
