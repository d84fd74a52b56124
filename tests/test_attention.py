"""Multi-head attention, attention rollout, the tiny ViT and DCAL's branches (kit.ops.attention, kit.nn)."""
import math

import numpy as np
import pytest
import torch

from kit.nn.dcal import DCAL, random_partners, uncertainty_weighted
from kit.nn.vit import TinyViT
from kit.ops.attention import (MultiHeadAttention, attention_rollout, class_token_map, class_token_scores,
                               discard_lowest, recording, top_tokens)
from kit.ops.ms_deform_attn import MSDeformAttn


def random_attention(batch, heads, tokens, generator):
    return torch.softmax(3 * torch.randn(batch, heads, tokens, tokens, generator=generator, dtype=torch.float64), -1)


def reference_rollout(attentions, head_fusion, discard_ratio):
    """The recipe written out per sample with NumPy loops (vit-explain's steps, rows renormalised)."""
    batch, _, tokens, _ = attentions[0].shape
    out = np.zeros((batch, tokens, tokens))
    for b in range(batch):
        result = np.eye(tokens)
        for layer in attentions:
            maps = layer[b].numpy()
            fused = {"mean": maps.mean(0), "max": maps.max(0), "min": maps.min(0)}[head_fusion].copy()
            flat = fused.reshape(-1)
            count = int(flat.size * discard_ratio)
            for index in np.argsort(flat, kind="stable")[:count]:
                if index != 0:
                    flat[index] = 0.0
            a = (fused + np.eye(tokens)) / 2
            for row in range(tokens):
                a[row] /= a[row].sum()
            result = a @ result
        out[b] = result
    return out


# --------------------------------------------------------------------------- attention


def test_attention_matches_the_formula_and_returns_its_map():
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    out, returned = attn(x, return_attention=True)
    q, k, v = (m(x).view(2, 5, 4, 4).transpose(1, 2) for m in (attn.query, attn.key, attn.value))
    weights = torch.softmax(q @ k.transpose(-2, -1) / 2.0, -1)  # sqrt(head_dim = 4) = 2
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(attn(x), expected)  # without the flag: the output alone
    torch.testing.assert_close(returned, weights)
    assert not returned.requires_grad


def test_cross_attention_shapes_and_duplicated_context_equals_self_attention():
    torch.manual_seed(1)
    attn = MultiHeadAttention(8, 2).double()
    x = torch.randn(3, 6, 8, dtype=torch.float64)
    # PWCA with I2 = I1: duplicated keys leave every softmax-weighted mean unchanged.
    alone = attn(x)
    doubled, weights = attn(x, torch.cat([x, x], 1), return_attention=True)
    torch.testing.assert_close(doubled, alone)
    # one softmax over the 12 keys: each copy of a key gets half its single-context weight
    _, single = attn(x, return_attention=True)
    torch.testing.assert_close(weights[..., :6], single / 2)
    torch.testing.assert_close(weights[..., 6:], single / 2)
    # GLCA: 2 queries against 6 keys; each query's row is the same as in full self-attention.
    out, weights = attn(x[:, :2], x, return_attention=True)
    torch.testing.assert_close(out, alone[:, :2])
    torch.testing.assert_close(weights, single[:, :, :2])


def test_attention_rejects_bad_shapes():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        MultiHeadAttention(10, 3)
    attn = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match="same B and C"):
        attn(torch.randn(2, 4, 8), torch.randn(3, 4, 8))
    with pytest.raises(ValueError, match=r"\(B, N, C\)"):
        attn(torch.randn(4, 8))


# --------------------------------------------------------------------------- rollout


def test_rollout_of_uniform_attention_is_uniform_over_patches():
    tokens = 17
    uniform = [torch.full((2, 3, tokens, tokens), 1.0 / tokens) for _ in range(4)]
    rollout = attention_rollout(uniform)
    scores = class_token_scores(rollout)
    torch.testing.assert_close(scores, torch.full_like(scores, scores[0, 0].item()))
    torch.testing.assert_close(class_token_map(rollout, (4, 4)), torch.ones(2, 4, 4))
    torch.testing.assert_close(rollout.sum(-1), torch.ones(2, tokens))  # rows stay stochastic


def test_rollout_of_identity_attention_is_identity():
    eye = torch.eye(5).expand(1, 2, 5, 5)
    torch.testing.assert_close(attention_rollout([eye, eye]), torch.eye(5)[None])


@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("discard_ratio", [0.0, 0.3, 0.9])
def test_rollout_agrees_with_a_loop_reference(head_fusion, discard_ratio):
    generator = torch.Generator().manual_seed(7)
    attentions = [random_attention(3, 4, 10, generator) for _ in range(3)]
    ours = attention_rollout(attentions, head_fusion=head_fusion, discard_ratio=discard_ratio)
    np.testing.assert_allclose(ours.numpy(), reference_rollout(attentions, head_fusion, discard_ratio),
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours.sum(-1), torch.ones(3, 10, dtype=torch.float64))


def test_rollout_equals_vit_explain_where_their_normalisation_is_the_same():
    """Mean fusion, no discarding, batch 1: vit-explain's ``a / a.sum(dim=-1)`` is row normalisation."""
    generator = torch.Generator().manual_seed(3)
    attentions = [random_attention(1, 3, 10, generator) for _ in range(4)]
    result = torch.eye(10, dtype=torch.float64)
    for attention in attentions:
        a = (attention.mean(1) + torch.eye(10, dtype=torch.float64)) / 2
        result = (a / a.sum(dim=-1)) @ result  # as vit-explain writes it (no keepdim)
    mask = result[0, 0, 1:] if result.dim() == 3 else result[0, 1:]
    ours = class_token_map(attention_rollout(attentions), (3, 3))[0]
    torch.testing.assert_close(ours, (mask / mask.max()).view(3, 3))


def test_discard_keeps_the_class_token_and_drops_the_right_count():
    fused = torch.tensor([[[0.01, 0.5], [0.2, 0.3]]])  # [CLS, CLS] is the smallest entry
    kept = discard_lowest(fused, 0.5)  # the 2 lowest: 0.01 (protected) and 0.2
    torch.testing.assert_close(kept, torch.tensor([[[0.01, 0.5], [0.0, 0.3]]]))


def test_rollout_rejects_bad_inputs():
    good = torch.full((1, 2, 5, 5), 0.2)
    with pytest.raises(ValueError, match="at least one"):
        attention_rollout([])
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout([good], head_fusion="median")
    with pytest.raises(ValueError, match="discard_ratio"):
        attention_rollout([good], discard_ratio=1.0)
    with pytest.raises(ValueError, match="one shape"):
        attention_rollout([good, torch.full((1, 2, 4, 4), 0.25)])
    with pytest.raises(ValueError, match="one shape"):
        attention_rollout([torch.full((2, 5, 5), 0.2)])
    with pytest.raises(ValueError, match="cells"):
        class_token_map(attention_rollout([good]), (3, 3))


def test_top_tokens_skip_the_class_token_and_count_ceil_ratio():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.2], [5.0, 4.0, 3.0, 2.0, 1.0]])
    chosen = top_tokens(scores, 0.3)  # ceil(1.5) = 2 of 5 patches
    assert chosen.tolist() == [[2, 4], [1, 2]]  # sequence indices: patch + 1
    assert top_tokens(torch.rand(2, 50), 0.1).shape == (2, 5)  # 0.1 * 50 is exactly 5
    assert sorted(top_tokens(torch.rand(1, 8), 1.0)[0].tolist()) == list(range(1, 9))
    with pytest.raises(ValueError, match="ratio"):
        top_tokens(scores, 0.0)
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        top_tokens(torch.rand(5), 0.5)


# --------------------------------------------------------------------------- ViT and DCAL


def small_vit(**kwargs):
    torch.manual_seed(0)
    return TinyViT(image_size=16, patch=4, dim=16, depth=3, num_heads=2, num_classes=5, **kwargs)


def test_vit_shapes_and_recorded_maps():
    vit = small_vit()
    states, attentions = vit.encode(torch.rand(2, 3, 16, 16))
    assert len(states) == 4 and states[0].shape == (2, 17, 16)
    assert len(attentions) == 3 and attentions[0].shape == (2, 2, 17, 17)
    torch.testing.assert_close(attentions[0].sum(-1), torch.ones(2, 2, 17))
    assert vit(torch.rand(2, 3, 16, 16)).shape == (2, 5)
    with pytest.raises(ValueError, match="images must be"):
        vit(torch.rand(2, 3, 20, 20))
    with pytest.raises(ValueError, match="multiple of patch"):
        TinyViT(image_size=18, patch=4)


def test_dcal_without_branches_is_the_baseline_vit():
    vit = small_vit()
    model = DCAL(vit, use_glca=False, use_pwca=False)
    images, labels = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    out = model(images, partner=random_partners(4))
    assert set(out) == {"sa", "attentions"}
    torch.testing.assert_close(out["sa"], vit(images))
    losses = model.loss(out, labels)
    torch.testing.assert_close(losses["total"], torch.nn.functional.cross_entropy(vit(images), labels))
    assert len(list(model.log_weights)) == 0


def test_glca_with_every_query_equals_the_last_sa_block():
    """GLCA starts as a copy of the last block: with all tokens as queries it reproduces SA."""
    model = DCAL(small_vit(), use_glca=True, use_pwca=False, local_ratio=1.0).double()
    images = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    states, attentions = model.vit.encode(images)
    logits, queries = model.glca(states, attentions)
    assert queries[:, 0].eq(0).all() and queries.shape == (3, 17)
    order = queries[..., None].expand(-1, -1, 16)
    last = model.vit.blocks[-1](torch.gather(states[-2], 1, order), context=states[-2])
    torch.testing.assert_close(torch.gather(states[-1], 1, order), last)
    torch.testing.assert_close(logits, model.vit.classify(states[-1]))


def test_glca_queries_follow_the_rollout_of_the_first_blocks():
    model = DCAL(small_vit(), use_glca=True, use_pwca=False, local_ratio=0.25)
    out = model(torch.rand(2, 3, 16, 16))
    expected = top_tokens(class_token_scores(attention_rollout(out["attentions"][:-1])), 0.25)
    assert out["queries"].shape == (2, 1 + 4)
    assert torch.equal(out["queries"][:, 1:], expected)
    assert (out["queries"][:, 1:] > 0).all() and len(set(out["queries"][0].tolist())) == 5


def test_pwca_with_itself_as_partner_equals_sa_and_shares_weights():
    model = DCAL(small_vit(), use_glca=False, use_pwca=True).double()
    images = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    out = model(images, partner=torch.arange(3))
    torch.testing.assert_close(out["pwca"], out["sa"])
    states, _ = model.vit.encode(images)
    joined = torch.cat([states[-2], states[-2][torch.arange(3)]], dim=1)
    _, attention = model.vit.blocks[-1](states[-2], context=joined, return_attention=True)
    assert attention.shape == (3, 2, 17, 34)  # one softmax over 2T keys
    torch.testing.assert_close(attention.sum(-1), torch.ones(3, 2, 17, dtype=torch.float64))
    # Inference never runs PWCA, and it adds no parameters beyond its uncertainty weight.
    assert "pwca" not in model(images)
    baseline = sum(p.numel() for p in small_vit().parameters())
    assert sum(p.numel() for p in model.parameters()) == baseline + 2  # w_sa and w_pwca


def test_dcal_training_step_reaches_every_parameter():
    model = DCAL(small_vit())
    images, labels = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    out = model(images, partner=random_partners(4, torch.Generator().manual_seed(0)))
    losses = model.loss(out, labels)
    assert set(losses) == {"total", "sa", "glca", "pwca"}
    losses["total"].backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.predict(images).sum(-1).allclose(torch.full((4,), 2.0))  # SA + GLCA probabilities


def test_uncertainty_weighting_is_minimised_at_log_loss():
    loss = torch.tensor(2.5)
    grid = torch.linspace(-1, 3, 401)
    values = torch.stack([uncertainty_weighted({"a": loss}, {"a": w}) for w in grid])
    assert abs(grid[values.argmin()].item() - math.log(2.5)) < 0.02
    with pytest.raises(ValueError, match="no uncertainty weight"):
        uncertainty_weighted({"a": loss, "b": loss}, {"a": torch.tensor(0.0)})


def test_partners_and_dcal_arguments():
    partners = random_partners(6, torch.Generator().manual_seed(1))
    assert sorted(partners.tolist()) == list(range(6)) and (partners != torch.arange(6)).all()
    with pytest.raises(ValueError, match="at least 2"):
        random_partners(1)
    with pytest.raises(ValueError, match="local_ratio"):
        DCAL(small_vit(), local_ratio=0.0)


def test_recording_keeps_maps_only_inside_the_block_and_restores_the_flag():
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=8, n_levels=1, n_heads=2, n_points=2)
    args = (torch.randn(1, 3, 8), torch.rand(1, 3, 1, 2), torch.randn(1, 16, 8), torch.tensor([[4, 4]]))
    attn(*args)
    assert attn.last == {} and attn.record is False
    with recording(attn):
        attn(*args)
    assert attn.record is False and attn.last["attention_weights"].shape == (1, 3, 2, 1, 2)
    torch.testing.assert_close(attn.last["attention_weights"].sum((-1, -2)), torch.ones(1, 3, 2))
    with pytest.raises(RuntimeError):
        with recording(attn):
            raise RuntimeError("inside")
    assert attn.record is False  # put back even when the block raises
    attn.record = True
    with recording(attn):
        pass
    assert attn.record is True  # the value it had, not False
    with pytest.raises(TypeError, match="no `record` flag"):
        with recording(MultiHeadAttention(8, 2)):
            pass


# --------------------------------------------------------------------------- drawing


def test_attention_drawing_helpers():
    import matplotlib.pyplot as plt

    from kit.viz.attention import draw_attention, draw_points, draw_tokens

    fig, ax = plt.subplots()
    draw_attention(ax, torch.rand(3, 32, 32), torch.rand(8, 8), title="t", query=(3.0, 4.0), colorbar=True)
    draw_tokens(ax, torch.tensor([0, 63]), (8, 8), 32)
    draw_points(ax, torch.rand(9, 2) * 32)
    assert len(ax.images) == 2 and len(ax.patches) == 2 and len(ax.collections) == 2
    placed = draw_attention(ax, torch.rand(3, 32, 32), torch.rand(4, 4), cell=8, first_centre=0.5)
    assert placed.get_extent() == [-3.5, 28.5, 28.5, -3.5]  # cell centres at 0.5, 8.5, 16.5, 24.5
    assert ax.get_xlim() == (0, 32)
    with pytest.raises(ValueError, match=r"\(h, w\)"):
        draw_attention(ax, torch.rand(3, 32, 32), torch.rand(64))
    with pytest.raises(ValueError, match="outside"):
        draw_tokens(ax, [64], (8, 8), 32)
    plt.close(fig)
