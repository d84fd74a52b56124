"""The generalized attention block of arXiv 1904.05873 (kit.ops.generalized_attention)."""
import math

import pytest
import torch

from kit.ops.generalized_attention import GeneralizedAttention, parse_attention_type, relative_position_embedding


def make(attention_type, channels=16, heads=4, kv_stride=1, gamma=1.0, **kwargs):
    torch.manual_seed(0)
    module = GeneralizedAttention(channels, num_heads=heads, kv_stride=kv_stride,
                                  attention_type=attention_type, **kwargs).double()
    with torch.no_grad():
        module.gamma.fill_(gamma)  # gamma starts at 0, which would hide every bug below
    return module


def features(n=2, channels=16, h=5, w=7, seed=1):
    return torch.randn(n, channels, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def slow_energy(module, x):
    """The paper's sum of terms, one (query, key) pair at a time, from the module's own parameters."""
    n, c, h, w = x.shape
    s = module.kv_stride
    x_kv = x[:, :, ::s, ::s]
    h_kv, w_kv = x_kv.shape[-2:]
    heads, d = module.num_heads, module.qk_embed_dim
    e1, e2, e3, e4 = module.attention_type
    q = module.query_conv(x).view(n, heads, d, h, w) if (e1 or e2) else None
    k = module.key_conv(x_kv).view(n, heads, d, h_kv, w_kv) if (e1 or e3) else None
    dim = module.position_embedding_dim
    freq = 1000.0 ** (4.0 / dim * torch.arange(dim // 4, dtype=torch.float64))
    embed = lambda delta: torch.cat([torch.sin(delta / freq), torch.cos(delta / freq)])
    energy = torch.zeros(n, heads, h * w, h_kv * w_kv, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            for a in range(h_kv):
                for b in range(w_kv):
                    total = torch.zeros(n, heads, dtype=torch.float64)
                    if e2 or e4:
                        # R_{k-q} as the paper's factorised x/y embedding of (query - key) offsets
                        rx = module.appr_geom_fc_x(embed(torch.tensor(float(j - b * s)))).view(heads, d) / math.sqrt(2)
                        ry = module.appr_geom_fc_y(embed(torch.tensor(float(i - a * s)))).view(heads, d) / math.sqrt(2)
                    if e1:
                        total += (q[:, :, :, i, j] * k[:, :, :, a, b]).sum(-1)
                    if e2:
                        total += (q[:, :, :, i, j] * (rx + ry)).sum(-1)
                    if e3:
                        total += (module.appr_bias.view(heads, d) * k[:, :, :, a, b]).sum(-1)
                    if e4:
                        total += (module.geom_bias.view(heads, d) * (rx + ry)).sum(-1)
                    energy[:, :, i * w + j, a * w_kv + b] = total
    return energy


@pytest.mark.parametrize("attention_type", ["1000", "0100", "0010", "0001", "1111", "0110", "1010", "0101"])
def test_energy_matches_the_paper_formula_term_by_term(attention_type):
    module = make(attention_type, kv_stride=2)
    x = features(h=5, w=6)  # not square: catches a transposed query grid
    with torch.no_grad():
        expected = slow_energy(module, x)
        energy = module.energy(x).expand_as(expected)
        torch.testing.assert_close(energy, expected)
        torch.testing.assert_close(sum(module.term_energies(x).values()), expected)
        assert set(module.term_energies(x)) == {f"E{i + 1}" for i, c in enumerate(attention_type) if c == "1"}


def test_content_term_only_is_plain_softmax_attention_without_scaling():
    module = make("1000", kv_stride=1)
    x = features()
    n, c, h, w = x.shape
    with torch.no_grad():
        q = module.query_conv(x).view(n, 4, 4, h * w).transpose(2, 3)  # (n, heads, hw, d), head-major
        k = module.key_conv(x).view(n, 4, 4, h * w)  # (n, heads, d, hw)
        v = module.value_conv(x).view(n, 4, 4, h * w).transpose(2, 3)
        attention = torch.softmax(q @ k, dim=-1)  # no 1/sqrt(d), as mmcv
        mixed = (attention @ v).transpose(2, 3).reshape(n, c, h, w)
        expected = x + module.proj_conv(mixed)
        torch.testing.assert_close(module(x), expected)
        torch.testing.assert_close(module.attention(x), attention)


def test_rows_sum_to_one_and_gamma_zero_is_identity():
    module = make("1111", kv_stride=2)
    x = features()
    with torch.no_grad():
        torch.testing.assert_close(module.attention(x).sum(-1), torch.ones(2, 4, 35, dtype=torch.float64))
        fresh = GeneralizedAttention(16, num_heads=4).double()
        torch.testing.assert_close(fresh(x), x)  # gamma = 0 at initialisation, as in mmcv


def test_key_saliency_only_gives_every_query_the_same_row():
    module = make("0010", kv_stride=1)
    x = features()
    with torch.no_grad():
        assert module.energy(x).shape == (2, 4, 1, 35)  # the fast path computes one row
        attention = module.attention(x)
        torch.testing.assert_close(attention, attention[:, :, :1].expand_as(attention))
        out = module(x)
        assert torch.allclose(out[..., 0, 0] - x[..., 0, 0], out[..., 3, 4] - x[..., 3, 4])  # same context


def test_position_only_maps_are_translates_of_each_other():
    module = make("0001", kv_stride=1)
    x = features(h=7, w=7)
    with torch.no_grad():
        energy = module.energy(x).view(2, 4, 7, 7, 7, 7)  # (n, heads, qy, qx, ky, kx)
        torch.testing.assert_close(energy[0], energy[1])  # content does not matter
        # query (2, 2) looking at (2+dy, 2+dx) == query (3, 4) looking at (3+dy, 4+dx)
        torch.testing.assert_close(energy[0, :, 2, 2, 1:5, 0:3], energy[0, :, 3, 4, 2:6, 2:5])


def test_kv_stride_shapes_and_equivalence_to_subsampled_keys():
    for h, w in [(8, 8), (7, 9)]:
        module = make("1111", kv_stride=2)
        x = features(h=h, w=w)
        with torch.no_grad():
            assert module(x).shape == x.shape
            h_kv, w_kv = (h + 1) // 2, (w + 1) // 2
            assert module.attention(x).shape == (2, 4, h * w, h_kv * w_kv)
    # kv_stride = s equals positions of a subsampled key map scaled by s.
    ex, ey = relative_position_embedding(3, 4, 2, 2, 1, 2, 8)
    fx, fy = relative_position_embedding(3, 4, 3, 4, 1, 1, 8)
    torch.testing.assert_close(ex, fx[:, ::2])
    torch.testing.assert_close(ey, fy[:, ::2])


def test_q_stride_upsamples_back_and_spatial_range_limits_keys():
    module = make("1111", kv_stride=1, q_stride=2)
    x = features(h=6, w=6)
    with torch.no_grad():
        assert module(x).shape == x.shape
        assert module.attention(x).shape == (2, 4, 9, 36)
    local = make("1111", kv_stride=1, spatial_range=1)
    with torch.no_grad():
        attention = local.attention(features(h=5, w=5)).view(2, 4, 5, 5, 5, 5)
    # mmcv's window is iy - r .. iy + r + 1 (one more row/column after the query than before it).
    assert attention[:, :, 2, 2, 1:5, 1:5].sum(dim=(-1, -2)).allclose(torch.ones(2, 4, dtype=torch.float64))
    assert attention[:, :, 0, 0, 3:, :].abs().max() == 0 and attention[:, :, 0, 0, :3, :3].min() > 0


def test_sin_cos_embedding_is_odd_and_even():
    ex, _ = relative_position_embedding(1, 5, 1, 5, 1, 1, 16)  # (5, 5, 8)
    delta = ex.transpose(0, 1)  # swapping query and key negates the offset
    torch.testing.assert_close(delta[..., :4], -ex[..., :4])  # sin: odd
    torch.testing.assert_close(delta[..., 4:], ex[..., 4:])  # cos: even
    torch.testing.assert_close(ex[2, 2], torch.tensor([0.0] * 4 + [1.0] * 4))


def test_parameters_are_named_and_shaped_as_mmcv():
    module = GeneralizedAttention(32, num_heads=8, attention_type="1111")
    shapes = {name: tuple(p.shape) for name, p in module.state_dict().items()}
    assert shapes == {
        "query_conv.weight": (32, 32, 1, 1), "key_conv.weight": (32, 32, 1, 1), "value_conv.weight": (32, 32, 1, 1),
        "appr_geom_fc_x.weight": (32, 16), "appr_geom_fc_y.weight": (32, 16), "appr_bias": (32,),
        "geom_bias": (32,), "proj_conv.weight": (32, 32, 1, 1), "proj_conv.bias": (32,), "gamma": (1,)}
    saliency = GeneralizedAttention(32, num_heads=8, attention_type="0010")
    assert set(saliency.state_dict()) == {"key_conv.weight", "value_conv.weight", "appr_bias",
                                          "proj_conv.weight", "proj_conv.bias", "gamma"}
    # mmcv drops leftover channels: 256 channels, 9 heads -> 28 per head, 252 in all.
    assert GeneralizedAttention(256).query_conv.weight.shape == (252, 256, 1, 1)
    # Weights copy over by name.
    other = GeneralizedAttention(32, num_heads=8, attention_type="1111")
    other.load_state_dict(module.state_dict())
    x = torch.randn(1, 32, 4, 4)
    with torch.no_grad():
        module.gamma.fill_(1.0)
        other.gamma.fill_(1.0)
        torch.testing.assert_close(other(x), module(x))


def test_bad_arguments_raise():
    for bad in ["111", "2111", "abcd", "11111", 1111]:
        with pytest.raises(ValueError, match="attention_type must be 4 characters"):
            GeneralizedAttention(16, num_heads=4, attention_type=bad)
    with pytest.raises(ValueError, match="num_heads"):
        GeneralizedAttention(4, num_heads=8)
    with pytest.raises(ValueError, match="kv_stride"):
        GeneralizedAttention(16, num_heads=4, kv_stride=0)
    with pytest.raises(ValueError, match="multiple of 4"):
        GeneralizedAttention(16, num_heads=4, position_embedding_dim=6, attention_type="0001")
    with pytest.raises(ValueError, match="spatial_range"):
        GeneralizedAttention(16, num_heads=4, spatial_range=-2)
    with pytest.raises(ValueError, match=r"x must be \(N, 16, H, W\)"):
        GeneralizedAttention(16, num_heads=4)(torch.randn(1, 8, 4, 4))
    assert parse_attention_type("0110") == (False, True, True, False)
