"""DETR's transformer layers (Carion et al., arXiv 2005.12872): dense attention, post-norm.

Shared by :class:`kit.det.detr.DETR` and :class:`kit.det.deformable_detr.DeformableDETR` (which
swaps the dense attentions for :class:`kit.ops.ms_deform_attn.MSDeformAttn` and keeps the rest):

* :func:`sine_position_embedding`: the fixed 2-d sine/cosine encoding of pixel centres.
* :class:`FeedForward`: the FFN with its residual and LayerNorm.
* :class:`EncoderLayer`: dense self-attention over every token, positions added to queries
  and keys (not values), then the FFN.
* :class:`DecoderLayer`: self-attention among the object queries, dense cross-attention to the
  encoder memory, then the FFN. It keeps its last cross-attention map for figures when
  ``record`` is set (:func:`kit.ops.attention.recording`).

Follows the official ``transformer.py`` (post-norm: ``norm(x + sublayer(x))``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["sine_position_embedding", "FeedForward", "EncoderLayer", "DecoderLayer"]


def sine_position_embedding(height: int, width: int, dim: int, device=None, temperature: float = 10000.0) -> torch.Tensor:
    """(H * W, dim) 2-d sine/cosine encoding of pixel centres, y features first then x (as DETR).

    Coordinates are ``(i + 0.5) / H * 2 pi`` (Deformable DETR's normalised form); each half of
    the channels encodes one axis with frequencies ``temperature ** (2 (k // 2) / (dim / 2))``.
    """
    if dim % 4 != 0:
        raise ValueError(f"dim must be a multiple of 4 (sin and cos for x and y), got {dim}")
    half = dim // 2
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * 2 * math.pi
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2 * math.pi
    freq = temperature ** (2 * (torch.arange(half, device=device) // 2) / half)  # (half,)

    def encode(coord):  # (n,) -> (n, half), sin on even channels and cos on odd ones, interleaved
        angles = coord[:, None] / freq
        return torch.stack([angles[:, 0::2].sin(), angles[:, 1::2].cos()], dim=-1).flatten(1)

    pos_y = encode(ys)[:, None, :].expand(height, width, half)
    pos_x = encode(xs)[None, :, :].expand(height, width, half)
    return torch.cat([pos_y, pos_x], dim=-1).reshape(height * width, dim)


class FeedForward(nn.Module):
    """The transformer FFN with its residual and post-norm: norm(x + W2 relu(W1 x))."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.linear1, self.linear2 = nn.Linear(d_model, ffn_dim), nn.Linear(ffn_dim, d_model)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x))))))


class EncoderLayer(nn.Module):
    """Dense self-attention over all tokens (positions added to queries and keys), then the FFN."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.ffn = FeedForward(d_model, ffn_dim, dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        q = k = src + pos  # (B, S, C)
        src = self.norm(src + self.dropout(self.self_attn(q, k, src, need_weights=False)[0]))
        return self.ffn(src)


class DecoderLayer(nn.Module):
    """Self-attention among queries, dense cross-attention to the encoder memory, then the FFN.

    While ``record`` is set (:func:`kit.ops.attention.recording`), ``last["attention"]`` holds the
    last call's cross-attention map (B, heads, Q, S), detached.
    """

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.ffn = FeedForward(d_model, ffn_dim, dropout)
        self.record, self.last = False, {}

    def forward(self, tgt, query_pos, memory, pos):
        # tgt, query_pos: (B, Q, C); memory, pos: (B, S, C)
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout(self.self_attn(q, k, tgt, need_weights=False)[0]))
        attended, weights = self.cross_attn(tgt + query_pos, memory + pos, memory, need_weights=self.record,
                                            average_attn_weights=False)
        if self.record:
            self.last = {"attention": weights.detach()}  # (B, heads, Q, S)
        tgt = self.norm2(tgt + self.dropout(attended))
        return self.ffn(tgt)
