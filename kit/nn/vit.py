"""A tiny Vision Transformer (ViT, Dosovitskiy et al. 2020, arXiv 2010.11929; DeiT's layout).

The image is cut into ``patch x patch`` patches, each linearly embedded; a learned class
token is prepended and learned position embeddings are added; ``depth`` pre-norm blocks
(``x + Attn(LN(x))``, then ``x + MLP(LN(x))``) follow; the class token's final state, after a
LayerNorm, is classified. Sizes here are tiny (orig. DeiT-Tiny: 224 px, patch 16, dim 192,
depth 12, 3 heads).

:meth:`TinyViT.encode` returns every block's input and attention map, which is what attention
rollout and DCAL's cross-attention branches need.
"""
from __future__ import annotations

import torch
from torch import nn

from kit.ops.attention import MultiHeadAttention


class Block(nn.Module):
    """Pre-norm Transformer block. ``context`` (default: the block's own input) gives keys and values."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, return_attention: bool = False):
        """x: (B, Nq, C) tokens that query (and carry the residual); context: (B, Nk, C) -> (B, Nq, C).

        With ``return_attention``: ``(output, attention)``, the map (B, heads, Nq, Nk) detached.
        """
        queries = self.norm1(x)
        keys_values = queries if context is None else self.norm1(context)
        attended, attention = self.attn(queries, keys_values, return_attention=True)
        x = x + attended
        out = x + self.mlp(self.norm2(x))
        return (out, attention) if return_attention else out


class TinyViT(nn.Module):
    """Patch embedding + class token + position embeddings + ``depth`` blocks + LayerNorm + linear head."""

    def __init__(self, image_size: int = 32, patch: int = 4, dim: int = 64, depth: int = 4,
                 num_heads: int = 4, num_classes: int = 10, mlp_ratio: float = 4.0):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size ({image_size}) must be a multiple of patch ({patch})")
        if depth < 1 or num_classes < 1:
            raise ValueError(f"depth and num_classes must be >= 1, got {depth} and {num_classes}")
        self.grid = (image_size // patch, image_size // patch)
        self.image_size, self.dim = image_size, dim
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)  # one linear map per patch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], dim))
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> tokens (B, 1 + N, C), class token first."""
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (self.image_size,) * 2:
            raise ValueError(f"images must be (B, 3, {self.image_size}, {self.image_size}), got {tuple(images.shape)}")
        patches = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N, C)
        cls = self.cls_token.expand(images.shape[0], -1, -1)  # (B, 1, C)
        return torch.cat([cls, patches], dim=1) + self.pos_embed

    def encode(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Run the blocks; returns (states, attentions).

        states[i] is the input of block i (states[0] the embedded tokens) and states[-1] the last
        block's output, each (B, 1 + N, C); attentions[i] is block i's map (B, heads, 1+N, 1+N).
        """
        states, attentions = [self.embed(images)], []
        for block in self.blocks:
            state, attention = block(states[-1], return_attention=True)
            states.append(state)
            attentions.append(attention)
        return states, attentions

    def classify(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes) from the class token of (B, 1 + N, C) tokens."""
        return self.head(self.norm(tokens[:, 0]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        states, _ = self.encode(images)
        return self.classify(states[-1])


def _init_weights(module: nn.Module) -> None:
    """DeiT's initialisation: truncated normal (std 0.02) for linear layers, LayerNorm at 1/0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
