"""Dual Cross-Attention Learning (DCAL, Zhu et al. CVPR 2022, arXiv 2205.02151) on a tiny ViT.

DCAL trains a ViT's self-attention (SA) branch together with two cross-attention branches:

* **GLCA**, global-local cross-attention: attention rollout over the SA blocks picks the top
  ``R`` patch tokens the class token attends to most; those tokens (plus the class token) are
  the *queries* of one extra block (its own weights), whose keys and values are *all* tokens:
  ``softmax(Q^l K^g^T / sqrt d) V^g``. It has its own classifier; at inference the SA and GLCA
  class probabilities are added.
* **PWCA**, pair-wise cross-attention (training only): image I1 runs through the SA blocks
  (shared weights) but every block's keys and values are I1's joined with those of a distractor
  image I2 from the same batch, ``softmax(Q_1 [K_1; K_2]^T / sqrt d) [V_1; V_2]``, one softmax
  over 2N+2 keys; it is trained on I1's label and removed at inference.

The three losses are combined with learned uncertainty weights (FairMOT's form):
``L = 1/2 sum_b (exp(-w_b) L_b + w_b)``.

Choices where the paper is not specific (the authors released no code): GLCA runs parallel to
the last SA block, on the output of block L-1, with the rollout over blocks 1..L-1; the class
token always joins the local queries (so the branch has a token to classify); I2's keys and
values at block i come from I2's own SA hidden state at block i (gradients flow through both);
the partner I2 is the batch rolled by a random offset (uniform pairs from the training set).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from kit.nn.vit import Block, TinyViT
from kit.ops.attention import attention_rollout, class_token_scores, top_tokens

BRANCHES = ("sa", "glca", "pwca")


def uncertainty_weighted(losses: dict[str, torch.Tensor], log_weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """``1/2 sum_b (exp(-w_b) L_b + w_b)`` over the branches in ``losses`` (FairMOT / Kendall et al.)."""
    missing = set(losses) - set(log_weights)
    if missing:
        raise ValueError(f"no uncertainty weight for the losses {sorted(missing)}")
    return 0.5 * sum(torch.exp(-log_weights[b]) * loss + log_weights[b] for b, loss in losses.items())


class DCAL(nn.Module):
    """A TinyViT (the SA branch) with optional GLCA and PWCA branches.

    With ``use_glca=False, use_pwca=False`` this is exactly the baseline ViT.
    """

    def __init__(self, vit: TinyViT, use_glca: bool = True, use_pwca: bool = True, local_ratio: float = 0.1):
        super().__init__()
        if not 0.0 < local_ratio <= 1.0:
            raise ValueError(f"local_ratio must be in (0, 1], got {local_ratio}")
        if use_glca and len(vit.blocks) < 2:
            raise ValueError("GLCA needs a ViT with at least 2 blocks (it runs parallel to the last one)")
        self.vit, self.use_glca, self.use_pwca, self.local_ratio = vit, use_glca, use_pwca, local_ratio
        if use_glca:
            # Own weights (not shared with SA), started as a copy of the last SA block and classifier.
            self.glca_block: Block = copy.deepcopy(vit.blocks[-1])
            self.glca_norm = copy.deepcopy(vit.norm)
            self.glca_head = copy.deepcopy(vit.head)
        used = ["sa"] + (["glca"] if use_glca else []) + (["pwca"] if use_pwca else [])
        # Uncertainty weights w_b, one per branch; the baseline (SA only) keeps plain cross-entropy.
        self.log_weights = nn.ParameterDict({b: nn.Parameter(torch.zeros(())) for b in used} if len(used) > 1 else {})

    def local_queries(self, attentions: list[torch.Tensor]) -> torch.Tensor:
        """Indices (B, 1 + k) of the GLCA queries: the class token, then the top-R rolled-out patches."""
        rollout = attention_rollout(attentions)  # (B, T, T), no gradient
        chosen = top_tokens(class_token_scores(rollout), self.local_ratio)  # (B, k), in 1..N
        cls = torch.zeros_like(chosen[:, :1])
        return torch.cat([cls, chosen], dim=1)

    def glca(self, states: list[torch.Tensor], attentions: list[torch.Tensor]):
        """GLCA logits (B, classes) and the query indices (B, 1 + k)."""
        tokens = states[-2]  # (B, T, C): input of the last SA block
        queries = self.local_queries(attentions[:-1])  # rollout over blocks 1..L-1
        local = torch.gather(tokens, 1, queries[..., None].expand(-1, -1, tokens.shape[-1]))  # (B, 1+k, C)
        out = self.glca_block(local, context=tokens)  # local queries, global keys/values
        return self.glca_head(self.glca_norm(out[:, 0])), queries

    def pwca(self, states: list[torch.Tensor], partner: torch.Tensor) -> torch.Tensor:
        """PWCA logits (B, classes): image i's queries against [its own; image partner[i]'s] keys/values."""
        tokens = states[0]  # (B, T, C) the embedded tokens of I1
        for depth, block in enumerate(self.vit.blocks):
            distractor = states[depth][partner]  # (B, T, C): I2's SA state at the same depth
            tokens = block(tokens, context=torch.cat([tokens, distractor], dim=1))  # keys: 2T
        return self.vit.classify(tokens)

    def forward(self, images: torch.Tensor, partner: torch.Tensor | None = None) -> dict:
        """Logits per branch: {"sa", "glca" (if used), "pwca" (if used and ``partner`` given)}.

        Also returns "queries" (GLCA's chosen token indices) and "attentions" (the SA maps).
        ``partner`` (B,) long: the distractor image's index in the batch for each image.
        """
        states, attentions = self.vit.encode(images)
        out = {"sa": self.vit.classify(states[-1]), "attentions": attentions}
        if self.use_glca:
            out["glca"], out["queries"] = self.glca(states, attentions)
        if self.use_pwca and partner is not None:
            out["pwca"] = self.pwca(states, partner)
        return out

    def loss(self, out: dict, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross-entropy per branch present in ``out`` and their uncertainty-weighted total."""
        losses = {b: F.cross_entropy(out[b], labels) for b in BRANCHES if b in out}
        if len(losses) == 1:
            return {"total": losses["sa"], **losses}
        weights = {b: self.log_weights[b] for b in losses}
        return {"total": uncertainty_weighted(losses, weights), **losses}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Inference class probabilities (B, classes): SA's, plus GLCA's when present (PWCA unused)."""
        out = self.forward(images)
        probabilities = out["sa"].softmax(-1)
        if self.use_glca:
            probabilities = probabilities + out["glca"].softmax(-1)
        return probabilities


def random_partners(batch_size: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """A distractor index for each image: the batch rolled by a random offset in 1..B-1 (never itself)."""
    if batch_size < 2:
        raise ValueError(f"PWCA needs a batch of at least 2 images, got {batch_size}")
    offset = int(torch.randint(1, batch_size, (1,), generator=generator))
    return ((torch.arange(batch_size) + offset) % batch_size).to(device)
