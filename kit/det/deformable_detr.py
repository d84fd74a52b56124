"""A small Deformable DETR (Zhu et al., arXiv 2010.04159): DETR with multi-scale deformable attention.

Where DETR's encoder lets every token attend to every other token of one feature map, here
every token of every level attends to ``P`` sampled points per head and level around its own
position (:class:`kit.ops.ms_deform_attn.MSDeformAttn`), so the encoder can afford several
levels (strides 8/16/32 here) and is linear in the number of pixels. In the decoder each
object query has a *reference point*, ``sigmoid(Linear(query_pos))``; cross-attention samples
around it, and the box head predicts the box centre as an offset from it in inverse-sigmoid
space. Classification is sigmoid focal loss over ``K`` classes (no "no object" column).

Follows the official ``deformable_transformer.py`` / ``deformable_detr.py`` (single-stage, no
iterative box refinement, no two-stage). Differences: a tiny random-init backbone, d_model 64
and 2 + 2 layers (orig. 256, 6 + 6), no dropout by default (orig. 0.1), GroupNorm with at
most 32 groups dividing d_model (orig. 32), no padding masks or valid ratios (our images in a
batch are never padded).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation

from kit.det.detr import MLP
from kit.det.set_detector import SetDetector
from kit.det.transformer import FeedForward, sine_position_embedding
from kit.nn.backbone import TinyResNet
from kit.ops.ms_deform_attn import MSDeformAttn, encoder_reference_points

__all__ = ["inverse_sigmoid", "DeformableEncoderLayer", "DeformableDecoderLayer", "DeformableDETR"]


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """log(x / (1 - x)), clamped as in the official code so that 0 and 1 stay finite."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention: each pixel of each level samples around its own centre."""

    def __init__(self, d_model: int, num_heads: int, num_levels: int, num_points: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, num_levels, num_heads, num_points)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.ffn = FeedForward(d_model, ffn_dim, dropout)

    def forward(self, src, pos, reference_points, spatial_shapes):
        # src, pos: (B, S, C); reference_points: (B, S, L, 2)
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes)
        return self.ffn(self.norm(src + self.dropout(attended)))


class DeformableDecoderLayer(nn.Module):
    """Dense self-attention among queries, deformable cross-attention around the reference point."""

    def __init__(self, d_model: int, num_heads: int, num_levels: int, num_points: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.cross_attn = MSDeformAttn(d_model, num_levels, num_heads, num_points)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.ffn = FeedForward(d_model, ffn_dim, dropout)

    def forward(self, tgt, query_pos, reference_points, memory, spatial_shapes):
        # tgt, query_pos: (B, Q, C); reference_points: (B, Q, L, 2); memory: (B, S, C)
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout(self.self_attn(q, k, tgt, need_weights=False)[0]))
        attended = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes)
        return self.ffn(self.norm2(tgt + self.dropout(attended)))


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with at most 32 groups dividing ``channels`` (the official code has 32)."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def conv_gn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> Conv2dNormActivation:
    """An input projection: conv (with bias, as the official code) -> GroupNorm, no activation."""
    return Conv2dNormActivation(in_channels, out_channels, kernel_size, stride, norm_layer=group_norm,
                                activation_layer=None, bias=True)


class DeformableDETR(SetDetector):
    """Backbone levels (``strides``) -> deformable encoder -> decoder with reference points -> heads.

    ``strides`` picks the levels: 4/8/16/32 come from the backbone through a 1x1 conv +
    GroupNorm, 64 (and 128) from extra stride-2 3x3 convs on the coarsest map, as the official
    C6. forward(images) -> ``{"logits": (B, Q, K), "boxes": (B, Q, 4) normalised (cx, cy, w, h),
    "aux": [...], "reference_points": (B, Q, 2), "spatial_shapes": (L, 2)}``.
    """

    class_mode = "focal"

    def __init__(self, num_classes: int, d_model: int = 64, num_heads: int = 4, num_points: int = 4,
                 num_encoder_layers: int = 2, num_decoder_layers: int = 2, ffn_dim: int = 256, num_queries: int = 20,
                 dropout: float = 0.0, widths=(16, 32, 64, 128), strides=(8, 16, 32)):
        super().__init__()
        strides = tuple(strides)
        if list(strides) != sorted(set(strides)) or not set(strides) <= {4, 8, 16, 32, 64, 128}:
            raise ValueError(f"strides must be increasing values from 4, 8, 16, 32, 64, 128, got {strides}")
        extra = [s for s in strides if s > 32]
        if extra and extra != [64, 128][: len(extra)]:
            raise ValueError(f"extra levels must be 64 (then 128) on top of stride 32, got {strides}")
        self.num_classes, self.num_queries, self.d_model, self.strides = num_classes, num_queries, d_model, strides
        self.backbone = TinyResNet(widths, num_outputs=4)
        self.backbone_levels = [self.backbone.strides.index(s) for s in strides if s <= 32]
        projections = [conv_gn(self.backbone.out_channels[i], d_model, 1) for i in self.backbone_levels]
        in_channels = self.backbone.out_channels[-1]
        for _ in extra:  # C6 from C5, C7 from C6 (stride-2 3x3 convs)
            projections.append(conv_gn(in_channels, d_model, 3, 2))
            in_channels = d_model
        self.input_proj = nn.ModuleList(projections)
        self.num_extra = len(extra)
        levels = len(strides)
        self.level_embed = nn.Parameter(torch.empty(levels, d_model))
        self.encoder = nn.ModuleList(DeformableEncoderLayer(d_model, num_heads, levels, num_points, ffn_dim, dropout)
                                     for _ in range(num_encoder_layers))
        self.decoder = nn.ModuleList(DeformableDecoderLayer(d_model, num_heads, levels, num_points, ffn_dim, dropout)
                                     for _ in range(num_decoder_layers))
        self.query_embed = nn.Embedding(num_queries, 2 * d_model)  # query position and content
        self.reference_points = nn.Linear(d_model, 2)
        self.class_embed = nn.Linear(d_model, num_classes)
        self.bbox_embed = MLP(d_model, d_model, 4, 3)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """The official init (``DeformableTransformer._reset_parameters`` and ``DeformableDETR``)."""
        for p in list(self.encoder.parameters()) + list(self.decoder.parameters()):
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
        nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)
        nn.init.constant_(self.class_embed.bias, -math.log((1 - 0.01) / 0.01))  # prior probability 0.01
        nn.init.zeros_(self.bbox_embed.layers[-1].weight)
        nn.init.zeros_(self.bbox_embed.layers[-1].bias)
        nn.init.constant_(self.bbox_embed.layers[-1].bias[2:], -2.0)  # start with w = h = sigmoid(-2) = 0.12
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)

    def feature_levels(self, images: torch.Tensor) -> list[torch.Tensor]:
        """[(B, C, H_l, W_l)] for every level in ``strides``."""
        stages = self.backbone(images)  # C2..C5
        maps = [proj(stages[i]) for proj, i in zip(self.input_proj, self.backbone_levels)]
        source = stages[-1]
        for proj in self.input_proj[len(self.backbone_levels):]:
            source = proj(source)
            maps.append(source)
        return maps

    def forward(self, images: torch.Tensor) -> dict:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        maps = self.feature_levels(images)
        b, device = images.shape[0], images.device
        shapes = torch.tensor([tuple(m.shape[-2:]) for m in maps])  # (L, 2) of (H, W), kept on the CPU
        src = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)  # (B, S, C)
        pos = torch.cat([sine_position_embedding(h, w, self.d_model, device) + self.level_embed[l]
                         for l, (h, w) in enumerate(m.shape[-2:] for m in maps)])[None].to(src.dtype)  # (1, S, C)
        levels = len(maps)

        # encoder: every pixel is a query; its reference point is its own centre, on every level
        enc_reference = encoder_reference_points(shapes, device)[None, :, None, :].expand(b, -1, levels, 2)
        for layer in self.encoder:
            src = layer(src, pos, enc_reference.to(src.dtype), shapes)

        # decoder: reference point of each query = sigmoid(Linear(query_pos))
        query_pos, tgt = self.query_embed.weight.split(self.d_model, dim=1)  # (Q, C) each
        query_pos, tgt = query_pos[None].expand(b, -1, -1), tgt[None].expand(b, -1, -1)
        reference = self.reference_points(query_pos).sigmoid()  # (B, Q, 2) normalised (x, y)
        dec_reference = reference[:, :, None, :].expand(-1, -1, levels, 2)
        outputs = []
        for layer in self.decoder:
            tgt = layer(tgt, query_pos, dec_reference, src, shapes)
            box = self.bbox_embed(tgt)  # (B, Q, 4), centre relative to the reference in logit space
            centre = box[..., :2] + inverse_sigmoid(reference)
            boxes = torch.cat([centre, box[..., 2:]], dim=-1).sigmoid()
            outputs.append({"logits": self.class_embed(tgt), "boxes": boxes})
        return {**outputs[-1], "aux": outputs[:-1], "reference_points": reference, "spatial_shapes": shapes}

