"""Multi-head attention that can return its attention maps, attention rollout, and recording maps.

* :class:`MultiHeadAttention` is Transformer attention (Vaswani et al. 2017, arXiv 1706.03762),
  ``softmax(Q K^T / sqrt(d)) V`` per head. Queries come from ``x``; keys and values come from
  ``context`` (``x`` itself by default). That one argument covers the three attentions of DCAL
  (arXiv 2205.02151): self-attention (``context=x``), global-local cross-attention (a few
  selected tokens as queries, every token as context) and pair-wise cross-attention (the
  context is two images' tokens joined, so one softmax runs over both). With
  ``return_attention=True`` it also returns its attention weights, detached.
* :func:`attention_rollout` (Abnar & Zuidema 2020, arXiv 2005.00928) follows how attention
  mixes information across layers: each layer's head-fused map is averaged with the identity
  (for the residual connection), its rows renormalised, and the layers multiplied,
  ``R = A_L ... A_2 A_1``. The options follow jacobgil/vit-explain (``head_fusion``,
  ``discard_ratio``), except that rows are renormalised per row (vit-explain divides column j
  by the sum of row j, which is only the same when the rows already sum to 1).
* :func:`class_token_scores` and :func:`top_tokens` read the class token's row of a rollout and
  pick the most attended patch tokens (DCAL's local queries).
* :func:`recording` is the kit's one way of keeping attention maps for figures from layers
  that are deep inside a model: a layer that can keep them has a ``record`` flag and, after a
  call made while it is set, a ``last`` dict of detached tensors
  (:class:`kit.ops.ms_deform_attn.MSDeformAttn`, :class:`kit.det.transformer.DecoderLayer`).
  Where the maps are part of the computation (rollout picks DCAL's queries), the layer returns
  them instead (``return_attention=True``).
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import torch
from torch import nn

HEAD_FUSIONS = ("mean", "max", "min")


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with ``num_heads`` heads; keys/values from ``context``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim < 1 or num_heads < 1 or dim % num_heads:
            raise ValueError(f"dim must be a positive multiple of num_heads, got dim={dim}, num_heads={num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.query = nn.Linear(dim, dim, bias=qkv_bias)
        self.key = nn.Linear(dim, dim, bias=qkv_bias)
        self.value = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def split_heads(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, _ = tokens.shape
        return tokens.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, N, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, return_attention: bool = False):
        """x: (B, Nq, C) queries; context: (B, Nk, C) keys and values (default ``x``) -> (B, Nq, C).

        With ``return_attention``: ``(output, attention)``, the weights (B, heads, Nq, Nk) detached.
        """
        context = x if context is None else context
        if x.dim() != 3 or context.dim() != 3 or context.shape[0] != x.shape[0] or context.shape[2] != x.shape[2]:
            raise ValueError(f"x and context must be (B, N, C) with the same B and C, got {tuple(x.shape)} "
                             f"and {tuple(context.shape)}")
        q = self.split_heads(self.query(x))  # (B, heads, Nq, d)
        k = self.split_heads(self.key(context))  # (B, heads, Nk, d)
        v = self.split_heads(self.value(context))  # (B, heads, Nk, d)
        # One softmax over all Nk keys for every query.
        attention = torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1)  # (B, heads, Nq, Nk)
        mixed = (attention @ v).transpose(1, 2).flatten(2)  # (B, Nq, C)
        out = self.proj(mixed)
        return (out, attention.detach()) if return_attention else out


@contextlib.contextmanager
def recording(*modules: nn.Module) -> Iterator[None]:
    """``with recording(layer, ...):`` each layer keeps its last call's maps in ``layer.last``.

    Sets ``record = True`` on every given module for the block and puts back the value it had,
    even when the block raises. A module without a ``record`` attribute is refused.
    """
    for module in modules:
        if not hasattr(module, "record"):
            raise TypeError(f"{type(module).__name__} keeps no attention maps (it has no `record` flag)")
    before = [module.record for module in modules]
    for module in modules:
        module.record = True
    try:
        yield
    finally:
        for module, value in zip(modules, before):
            module.record = value


# --------------------------------------------------------------------------- rollout


def fuse_heads(attention: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """(B, heads, T, T) -> (B, T, T) by the mean, max or min over heads."""
    if head_fusion == "mean":
        return attention.mean(dim=1)
    if head_fusion == "max":
        return attention.amax(dim=1)
    if head_fusion == "min":
        return attention.amin(dim=1)
    raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")


def discard_lowest(fused: torch.Tensor, discard_ratio: float) -> torch.Tensor:
    """Zero the ``int(T*T*discard_ratio)`` smallest entries of each (T, T) map, never [CLS, CLS].

    As in vit-explain: the entries are chosen over the whole flattened map (not per row), and
    only flat index 0 (the class token attending to itself) is protected.
    """
    batch, tokens, _ = fused.shape
    flat = fused.reshape(batch, tokens * tokens)  # (B, T*T)
    count = int(flat.shape[1] * discard_ratio)
    if count == 0:
        return fused
    lowest = flat.topk(count, dim=1, largest=False).indices  # (B, count)
    drop = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, lowest, True)
    drop[:, 0] = False  # keep the class token's attention to itself
    return flat.masked_fill(drop, 0.0).view(batch, tokens, tokens)


def attention_rollout(attentions: Sequence[torch.Tensor], head_fusion: str = "mean",
                      discard_ratio: float = 0.0) -> torch.Tensor:
    """Rollout of a list of per-layer attention maps, first layer first -> (B, T, T).

    Each layer: fuse the heads, discard the lowest entries (optional), add the identity and
    halve, ``A = (S + I) / 2`` (the residual connection), renormalise every row to sum to 1;
    then ``R = A_L ... A_1``. Row ``R[0]`` says how much each input token reaches the class
    token. DCAL uses ``head_fusion="mean"`` and no discarding.
    """
    if len(attentions) == 0:
        raise ValueError("attention_rollout needs at least one attention map")
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    shape = attentions[0].shape
    for layer, attention in enumerate(attentions):
        if attention.dim() != 4 or attention.shape[-1] != attention.shape[-2] or attention.shape != shape:
            raise ValueError(f"every attention map must be (B, heads, T, T) with one shape; layer {layer} is "
                             f"{tuple(attention.shape)}, layer 0 is {tuple(shape)}")
    batch, tokens = shape[0], shape[-1]
    identity = torch.eye(tokens, dtype=attentions[0].dtype, device=attentions[0].device)
    result = identity.expand(batch, tokens, tokens)  # (B, T, T)
    with torch.no_grad():
        for attention in attentions:
            fused = discard_lowest(fuse_heads(attention.detach(), head_fusion), discard_ratio)  # (B, T, T)
            mixed = (fused + identity) / 2
            mixed = mixed / mixed.sum(dim=-1, keepdim=True)  # rows sum to 1
            result = mixed @ result  # the newest layer multiplies from the left
    return result


def class_token_scores(rollout: torch.Tensor) -> torch.Tensor:
    """The class token's row of a rollout without the class token itself: (B, T, T) -> (B, T-1)."""
    if rollout.dim() != 3 or rollout.shape[1] != rollout.shape[2] or rollout.shape[1] < 2:
        raise ValueError(f"rollout must be (B, T, T) with T >= 2, got {tuple(rollout.shape)}")
    return rollout[:, 0, 1:]


def class_token_map(rollout: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The class token's rollout over the patches as an image (B, h, w), scaled to max 1 (vit-explain)."""
    scores = class_token_scores(rollout)  # (B, N)
    if grid[0] * grid[1] != scores.shape[1]:
        raise ValueError(f"grid {grid} has {grid[0] * grid[1]} cells but there are {scores.shape[1]} patch tokens")
    return (scores / scores.amax(dim=1, keepdim=True)).view(-1, *grid)


def top_tokens(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Token indices (into the sequence with the class token at 0) of the top ``ceil(ratio*N)`` patches.

    scores: (B, N) per-patch scores (e.g. :func:`class_token_scores`) -> (B, k) indices in
    1..N, highest score first. Never returns 0, the class token.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (B, N), got {tuple(scores.shape)}")
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    count = max(1, math.ceil(ratio * scores.shape[1] - 1e-9))  # 1e-9: 0.1 * 50 is 5, not 6
    return scores.topk(count, dim=1).indices + 1  # (B, k); +1 skips the class token
