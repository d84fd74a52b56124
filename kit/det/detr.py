"""A small DETR (Carion et al., arXiv 2005.12872): CNN features -> transformer -> a set of boxes.

One feature map of the backbone is flattened into ``H * W`` tokens. A transformer encoder lets
every token attend to every other (dense attention, quadratic in ``H * W``); a decoder turns
``Q`` learned object queries into ``Q`` predictions (class logits with a "no object" column,
and a normalised ``(cx, cy, w, h)`` box). Training matches predictions to objects one-to-one
(:mod:`kit.det.hungarian`), so there are no anchors and no NMS. The layers are
:mod:`kit.det.transformer`'s; test-time post-processing is :mod:`kit.det.set_detector`'s.

This is the baseline of the Deformable DETR notebook. Differences from the official DETR: a
tiny random-init backbone instead of an ImageNet ResNet-50, a configurable feature stride
(16 by default, the "DC5" setting; orig. 32), d_model 64 and 2 + 2 layers (orig. 256, 6 + 6),
and no dropout by default (orig. 0.1) because our runs are short. The rest follows the
official code: post-norm layers, sine positional encodings added to queries and keys at every
layer, a shared final LayerNorm on every decoder output, auxiliary losses on every layer.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kit.det.set_detector import SetDetector
from kit.det.transformer import DecoderLayer, EncoderLayer, sine_position_embedding
from kit.nn.backbone import TinyResNet

__all__ = ["MLP", "DETR"]


class MLP(nn.Module):
    """Linear layers with ReLU in between (DETR's box head: 3 layers).

    Kept by hand rather than :class:`torchvision.ops.MLP`: that one draws the same initial
    weights but names them ``0.weight, 3.weight, ...`` (ReLU and Dropout modules in between), so
    the checkpoints' ``layers.i`` keys would no longer load.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def backbone_level(strides: list[int], stride: int) -> int:
    """Index of the backbone output with this stride."""
    if stride not in strides:
        raise ValueError(f"feature stride must be one of the backbone's {strides}, got {stride}")
    return strides.index(stride)


class DETR(SetDetector):
    """Backbone -> one feature map (``feature_stride``) -> encoder -> decoder -> class + box heads.

    forward(images (B, 3, H, W)) -> ``{"logits": (B, Q, K + 1), "boxes": (B, Q, 4) normalised
    (cx, cy, w, h), "aux": [...one dict per earlier decoder layer], "feature_shape": (h, w)}``.
    ``class_mode="softmax"`` is DETR's classifier (K + 1 logits, the last one "no object");
    ``"focal"`` gives K sigmoid logits with a 0.01 prior, as Deformable DETR (the paper's
    "DETR+" ablation uses focal loss too). Train with ``set_loss(..., mode=model.class_mode)``.
    """

    def __init__(self, num_classes: int, d_model: int = 64, num_heads: int = 4, num_encoder_layers: int = 2,
                 num_decoder_layers: int = 2, ffn_dim: int = 256, num_queries: int = 20, dropout: float = 0.0,
                 widths=(16, 32, 64, 128), feature_stride: int = 16, class_mode: str = "softmax"):
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        if class_mode not in ("softmax", "focal"):
            raise ValueError(f"class_mode must be 'softmax' or 'focal', got {class_mode!r}")
        self.class_mode = class_mode
        self.num_classes, self.num_queries, self.d_model = num_classes, num_queries, d_model
        self.backbone = TinyResNet(widths, num_outputs=4)
        self.level = backbone_level(self.backbone.strides, feature_stride)
        self.feature_stride = feature_stride
        self.input_proj = nn.Conv2d(self.backbone.out_channels[self.level], d_model, 1)
        self.encoder = nn.ModuleList(EncoderLayer(d_model, num_heads, ffn_dim, dropout)
                                     for _ in range(num_encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(d_model, num_heads, ffn_dim, dropout)
                                     for _ in range(num_decoder_layers))
        self.decoder_norm = nn.LayerNorm(d_model)
        self.query_embed = nn.Embedding(num_queries, d_model)
        self.class_embed = nn.Linear(d_model, num_classes + (1 if class_mode == "softmax" else 0))
        self.bbox_embed = MLP(d_model, d_model, 4, 3)
        for p in list(self.encoder.parameters()) + list(self.decoder.parameters()):
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        if class_mode == "focal":
            nn.init.constant_(self.class_embed.bias, -math.log((1 - 0.01) / 0.01))  # prior probability 0.01

    def forward(self, images: torch.Tensor) -> dict:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        feature = self.input_proj(self.backbone(images)[self.level])  # (B, C, h, w)
        b, c, h, w = feature.shape
        src = feature.flatten(2).transpose(1, 2)  # (B, h w, C)
        pos = sine_position_embedding(h, w, c, images.device).to(src.dtype)[None]  # (1, h w, C)
        for layer in self.encoder:
            src = layer(src, pos)
        query_pos = self.query_embed.weight[None].expand(b, -1, -1)  # (B, Q, C)
        tgt = torch.zeros_like(query_pos)
        outputs = []
        for layer in self.decoder:
            tgt = layer(tgt, query_pos, src, pos)
            hidden = self.decoder_norm(tgt)
            outputs.append({"logits": self.class_embed(hidden), "boxes": self.bbox_embed(hidden).sigmoid()})
        return {**outputs[-1], "aux": outputs[:-1], "feature_shape": (h, w)}
