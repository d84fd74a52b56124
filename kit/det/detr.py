"""A small DETR (Carion et al., arXiv 2005.12872): CNN features -> transformer -> a set of boxes.

One feature map of the backbone is flattened into ``H * W`` tokens. A transformer encoder lets
every token attend to every other (dense attention, quadratic in ``H * W``); a decoder turns
``Q`` learned object queries into ``Q`` predictions (class logits with a "no object" column,
and a normalised ``(cx, cy, w, h)`` box). Training matches predictions to objects one-to-one
(:mod:`kit.det.hungarian`), so there are no anchors and no NMS.

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
from torchvision.ops import box_convert

from kit.nn.backbone import TinyResNet

__all__ = ["sine_position_embedding", "MLP", "FeedForward", "EncoderLayer", "DecoderLayer", "DETR",
           "postprocess_set"]


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


class MLP(nn.Module):
    """Linear layers with ReLU in between (DETR's box head: 3 layers)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


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

    def __init__(self, d_model: int, n_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.ffn = FeedForward(d_model, ffn_dim, dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        q = k = src + pos  # (B, S, C)
        src = self.norm(src + self.dropout(self.self_attn(q, k, src, need_weights=False)[0]))
        return self.ffn(src)


class DecoderLayer(nn.Module):
    """Self-attention among queries, dense cross-attention to the encoder memory, then the FFN.

    With ``record = True`` the last cross-attention map (B, heads, Q, S) is kept in ``last``.
    """

    def __init__(self, d_model: int, n_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.ffn = FeedForward(d_model, ffn_dim, dropout)
        self.record, self.last = False, {}

    def forward(self, tgt, query_pos, memory, pos):
        q = k = tgt + query_pos  # (B, Q, C)
        tgt = self.norm1(tgt + self.dropout(self.self_attn(q, k, tgt, need_weights=False)[0]))
        attended, weights = self.cross_attn(tgt + query_pos, memory + pos, memory, need_weights=self.record,
                                            average_attn_weights=False)
        if self.record:
            self.last = {"attention": weights.detach()}  # (B, heads, Q, S)
        tgt = self.norm2(tgt + self.dropout(attended))
        return self.ffn(tgt)


def _backbone_level(strides: list[int], stride: int) -> int:
    if stride not in strides:
        raise ValueError(f"feature stride must be one of the backbone's {strides}, got {stride}")
    return strides.index(stride)


class SetDetector(nn.Module):
    """What DETR and Deformable DETR share at test time: ``forward`` returns the final
    decoder layer's ``logits`` and normalised cxcywh ``boxes``; ``class_mode`` names the loss."""

    class_mode: str

    @torch.no_grad()
    def detect(self, images: torch.Tensor, top_k: int = 100) -> list[dict]:
        """Detections per image in pixels (eval mode), top-k over queries x classes, as
        :func:`postprocess_set`."""
        was_training = self.training
        self.eval()
        out = self(images)
        self.train(was_training)
        return postprocess_set(out["logits"], out["boxes"], images.shape[-1], self.class_mode, top_k)


class DETR(SetDetector):
    """Backbone -> one feature map (``feature_stride``) -> encoder -> decoder -> class + box heads.

    forward(images (B, 3, H, W)) -> ``{"logits": (B, Q, K + 1), "boxes": (B, Q, 4) normalised
    (cx, cy, w, h), "aux": [...one dict per earlier decoder layer], "feature_shape": (h, w)}``.
    ``class_mode="softmax"`` is DETR's classifier (K + 1 logits, the last one "no object");
    ``"focal"`` gives K sigmoid logits with a 0.01 prior, as Deformable DETR (the paper's
    "DETR+" ablation uses focal loss too). Train with ``set_loss(..., mode=model.class_mode)``.
    """

    def __init__(self, num_classes: int, d_model: int = 64, n_heads: int = 4, enc_layers: int = 2,
                 dec_layers: int = 2, ffn_dim: int = 256, num_queries: int = 20, dropout: float = 0.0,
                 widths=(16, 32, 64, 128), feature_stride: int = 16, class_mode: str = "softmax"):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if class_mode not in ("softmax", "focal"):
            raise ValueError(f"class_mode must be 'softmax' or 'focal', got {class_mode!r}")
        self.class_mode = class_mode
        self.num_classes, self.num_queries, self.d_model = num_classes, num_queries, d_model
        self.backbone = TinyResNet(widths, num_outputs=4)
        self.level = _backbone_level(self.backbone.strides, feature_stride)
        self.feature_stride = feature_stride
        self.input_proj = nn.Conv2d(self.backbone.out_channels[self.level], d_model, 1)
        self.encoder = nn.ModuleList(EncoderLayer(d_model, n_heads, ffn_dim, dropout) for _ in range(enc_layers))
        self.decoder = nn.ModuleList(DecoderLayer(d_model, n_heads, ffn_dim, dropout) for _ in range(dec_layers))
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



def postprocess_set(logits: torch.Tensor, boxes: torch.Tensor, image_size: int, mode: str,
                    top_k: int = 100) -> list[dict]:
    """Top-k over queries x classes: per image ``{boxes (D, 4) xyxy pixels, scores (D,), labels (D,)}``.

    Scores are sigmoid probabilities (``"focal"``) or softmax probabilities without the
    no-object column (``"softmax"``). Taking the top-k over (query, class) pairs, as Deformable
    DETR's ``PostProcess`` does, lets a query offer its second-best class too; DETR's own
    post-processing keeps one class per query (that gives a slightly lower AP). No NMS.
    """
    if mode == "softmax":
        probs = logits.float().softmax(-1)[..., :-1]  # (B, Q, K)
    elif mode == "focal":
        probs = logits.float().sigmoid()
    else:
        raise ValueError(f"mode must be 'focal' or 'softmax', got {mode!r}")
    b, q, k = probs.shape
    scores, index = probs.flatten(1).topk(min(top_k, q * k), dim=1)  # (B, D)
    query, label = index // k, index % k
    xyxy = box_convert(boxes.float(), "cxcywh", "xyxy") * image_size  # (B, Q, 4)
    picked = torch.gather(xyxy, 1, query[..., None].expand(-1, -1, 4))
    return [{"boxes": picked[i], "scores": scores[i], "labels": label[i]} for i in range(b)]
