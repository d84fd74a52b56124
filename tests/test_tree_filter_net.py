"""kit.seg.tree_filter_net: the LTF fusion equals kit.ops.tree_filter on its inputs (and the dense
brute force), the non-local block equals a written-out softmax attention, the plain arm is TinyFCN."""
import torch

from kit.ops.tree_filter import brute_force_tree_filter, grid_mst, tree_filter
from kit.seg.models import TinyFCN
from kit.seg.tree_filter_net import NonLocalBlock, NonLocalFusion, TreeFilterFCN, TreeFilterFusion


def test_shapes_of_every_arm():
    images = torch.rand(2, 3, 32, 32)
    for aggregator in ("plain", "tree_filter", "non_local"):
        model = TreeFilterFCN(3, aggregator)
        assert model(images).shape == (2, 4, 32, 32)
        loss = model.loss(images, torch.randint(0, 4, (2, 32, 32)))
        loss.backward()
        assert torch.isfinite(loss)


def test_plain_arm_is_tiny_fcn():
    torch.manual_seed(0)
    reference = TinyFCN(3)
    model = TreeFilterFCN(3, "plain")
    model.load_state_dict(reference.state_dict(), strict=True)
    images = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model.eval()(images), reference.eval()(images), atol=1e-6)


def test_tree_filter_fusion_equals_the_op_and_the_brute_force():
    torch.manual_seed(1)
    fusion = TreeFilterFusion(8, groups=4).double()
    previous, latent = torch.randn(2, 8, 5, 6, dtype=torch.float64), torch.randn(2, 8, 5, 6, dtype=torch.float64)
    out = fusion(previous, latent)
    embed, tree = fusion.filter_inputs(previous, latent)
    assert torch.allclose(out, latent + tree_filter(previous, embed, tree, groups=4), atol=1e-12)
    assert torch.allclose(out, latent + brute_force_tree_filter(previous, embed, grid_mst(latent), groups=4),
                          atol=1e-10)
    # the tree comes from the latent (the finer stage), not the embedding
    other = grid_mst(embed.detach())
    assert not torch.equal(tree.parent_of(), other.parent_of())


def test_tree_filter_fusion_gradients_reach_embedding_and_previous():
    torch.manual_seed(2)
    fusion = TreeFilterFusion(4, groups=2)
    previous = torch.randn(1, 4, 4, 4, requires_grad=True)
    fusion(previous, torch.randn(1, 4, 4, 4)).square().sum().backward()
    assert previous.grad.abs().sum() > 0 and fusion.embed.weight.grad.abs().sum() > 0


def test_non_local_equals_brute_force_softmax_attention():
    torch.manual_seed(3)
    block = NonLocalBlock(6, inner=3).double()
    torch.nn.init.normal_(block.out.weight)
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        theta, phi, g = (conv(x).flatten(2) for conv in (block.theta, block.phi, block.g))  # (B, 3, N)
    expected = torch.zeros_like(g)
    for b in range(2):
        for i in range(12):
            scores = torch.tensor([float(theta[b, :, i] @ phi[b, :, j]) for j in range(12)], dtype=torch.float64)
            weights = scores.exp() / scores.exp().sum()
            expected[b, :, i] = (g[b] * weights).sum(1)
    reference = x + block.out(expected.reshape(2, 3, 3, 4))
    assert torch.allclose(block(x), reference, atol=1e-10)
    assert torch.allclose(block.attention(x).sum(-1), torch.ones(2, 12, dtype=torch.float64))


def test_non_local_starts_as_identity():
    fusion = NonLocalFusion(8)
    previous, latent = torch.randn(1, 8, 4, 4), torch.randn(1, 8, 4, 4)
    assert torch.allclose(fusion(previous, latent), latent + previous)


def test_fusion_inputs_expose_the_filter():
    model = TreeFilterFCN(2, "tree_filter", stages=(2,))
    images = torch.rand(2, 3, 32, 32)
    inputs = model.fusion_inputs(images)
    assert inputs["embed"].shape == inputs["previous"].shape == (2, 32, 8, 8)
    assert inputs["tree"].edges.shape == (2, 63, 2)
    assert model.training
    nl = TreeFilterFCN(2, "non_local").fusion_inputs(images, stage=1)
    assert nl["attention"].shape == (2, 16, 16)
