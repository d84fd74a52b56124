import itertools
import math

import pytest
import torch

from kit.ops.ms_deform_attn import (MSDeformAttn, check_spatial_shapes, encoder_reference_points,
                                    level_start_index, ms_deform_attn)


def loop_reference(value, shapes, locations, weights):
    """Bilinear sampling with zero padding, one sample at a time (pixel centres at (i + .5) / W)."""
    n, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    starts = [0] + list(itertools.accumulate(h * w for h, w in shapes))[:-1]
    out = torch.zeros(n, queries, heads, dim, dtype=value.dtype)
    for b, q, m, l, p in itertools.product(range(n), range(queries), range(heads), range(levels), range(points)):
        h, w = shapes[l]
        x = float(locations[b, q, m, l, p, 0]) * w - 0.5  # pixel coordinates
        y = float(locations[b, q, m, l, p, 1]) * h - 0.5
        x0, y0 = math.floor(x), math.floor(y)
        sample = torch.zeros(dim, dtype=value.dtype)
        for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
            if 0 <= yy < h and 0 <= xx < w:
                bilinear = (1 - abs(x - xx)) * (1 - abs(y - yy))
                sample += bilinear * value[b, starts[l] + yy * w + xx, m]
        out[b, q, m] += float(weights[b, q, m, l, p]) * sample
    return out.reshape(n, queries, heads * dim)


def random_inputs(shapes, n=2, heads=3, dim=4, queries=5, points=2, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    value = torch.randn(n, s, heads, dim, generator=g, dtype=dtype)
    # some locations fall slightly outside [0, 1]: they still read part of a border pixel
    locations = torch.rand(n, queries, heads, len(shapes), points, 2, generator=g, dtype=dtype) * 1.2 - 0.1
    weights = torch.rand(n, queries, heads, len(shapes), points, generator=g, dtype=dtype)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return value, torch.tensor(shapes), locations, weights


def test_pixel_centres_give_the_pixel_values():
    h, w = 3, 5
    value = torch.randn(1, h * w, 2, 3)
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    centres = torch.stack([(cols.flatten() + 0.5) / w, (rows.flatten() + 0.5) / h], -1)  # (HW, 2)
    locations = centres[None, :, None, None, None, :].expand(1, h * w, 2, 1, 1, 2)
    weights = torch.ones(1, h * w, 2, 1, 1)
    out = ms_deform_attn(value, torch.tensor([[h, w]]), locations, weights)
    assert torch.allclose(out, value.reshape(1, h * w, 6), atol=1e-6)
    # and encoder_reference_points are exactly those centres
    assert torch.allclose(encoder_reference_points([[h, w]]), centres)


def test_agrees_with_a_slow_loop_reference_on_awkward_shapes():
    shapes = [(4, 7), (2, 3), (1, 2)]
    value, spatial, locations, weights = random_inputs(shapes)
    out = ms_deform_attn(value, spatial, locations, weights)
    assert out.shape == (2, 5, 12)
    assert torch.allclose(out, loop_reference(value, shapes, locations, weights), atol=1e-10)


def test_constant_map_gives_the_constant_for_interior_points():
    shapes = [(6, 5), (3, 3)]
    value, spatial, locations, weights = random_inputs(shapes)
    value = torch.full_like(value, 2.5)
    interior = 0.2 + 0.6 * locations.clamp(0, 1)  # at least half a pixel from every border
    assert torch.allclose(ms_deform_attn(value, spatial, interior, weights), torch.full((2, 5, 12), 2.5, dtype=torch.float64))


def test_level_permutation_leaves_the_output_unchanged():
    shapes = [(4, 4), (2, 3), (3, 1)]
    value, spatial, locations, weights = random_inputs(shapes)
    order = [2, 0, 1]
    blocks = value.split([h * w for h, w in shapes], dim=1)
    permuted = ms_deform_attn(torch.cat([blocks[i] for i in order], 1), spatial[order],
                              locations[:, :, :, order], weights[:, :, :, order])
    assert torch.allclose(permuted, ms_deform_attn(value, spatial, locations, weights), atol=1e-12)


def test_gradcheck_value_locations_weights():
    value, spatial, locations, weights = random_inputs([(3, 2), (2, 2)], n=1, heads=2, dim=2, queries=2, points=2)
    locations = 0.1 + 0.8 * locations.clamp(0, 1)  # interior: away from the zero-padding border
    inputs = tuple(t.clone().requires_grad_() for t in (value, locations, weights))
    assert torch.autograd.gradcheck(lambda v, l, a: ms_deform_attn(v, spatial, l, a), inputs, atol=1e-6)


def test_bad_inputs_raise_clear_errors():
    value, spatial, locations, weights = random_inputs([(3, 4), (2, 2)])
    with pytest.raises(ValueError, match="sampling_locations must be"):
        ms_deform_attn(value, spatial, locations[..., 0], weights)
    with pytest.raises(ValueError, match="sampling_locations must be"):
        ms_deform_attn(value, spatial, locations[:, :, :, :1], weights)
    with pytest.raises(ValueError, match="must equal S"):
        ms_deform_attn(value, torch.tensor([[3, 4], [2, 3]]), locations, weights)
    with pytest.raises(ValueError, match="attention_weights must be"):
        ms_deform_attn(value, spatial, locations, weights[..., :1])
    with pytest.raises(ValueError, match="integers"):
        check_spatial_shapes(torch.tensor([[3.0, 4.0]]))
    with pytest.raises(ValueError, match=r"\(N, S, M, D\)"):
        ms_deform_attn(value[0], spatial, locations, weights)


def test_level_start_index():
    assert level_start_index([[4, 5], [2, 3], [1, 1]]).tolist() == [0, 20, 26]


def test_module_init_is_uniform_attention_on_a_radial_pattern():
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    attn.record = True
    shapes = [(8, 8), (4, 4)]
    query = torch.randn(1, 5, 16)
    reference = torch.full((1, 5, 2, 2), 0.5)
    attn(query, reference, torch.randn(1, 80, 16), torch.tensor(shapes))
    weights = attn.last["attention_weights"]
    assert torch.allclose(weights, torch.full_like(weights, 1 / 6))
    # head 0 points along +x, head 1 along +y (theta = 90 deg), k + 1 pixels out on each level
    offsets_px = (attn.last["sampling_locations"] - 0.5) * torch.tensor([[8.0, 8.0], [4.0, 4.0]])[None, None, None, :, None, :]
    assert torch.allclose(offsets_px[0, 0, 0, :, :, 0], torch.tensor([[1.0, 2, 3]] * 2), atol=1e-5)
    assert torch.allclose(offsets_px[0, 0, 0, :, :, 1], torch.zeros(2, 3), atol=1e-5)
    assert torch.allclose(offsets_px[0, 0, 1, :, :, 1], torch.tensor([[1.0, 2, 3]] * 2), atol=1e-5)


def test_module_offsets_are_divided_by_width_and_height():
    """Locations are (x, y) but shapes are (H, W): a one-pixel x offset is 1 / W, not 1 / H."""
    attn = MSDeformAttn(d_model=4, n_levels=1, n_heads=1, n_points=1)
    attn.record = True
    with torch.no_grad():
        attn.sampling_offsets.bias.copy_(torch.tensor([1.0, 1.0]))
    h, w = 2, 8
    attn(torch.randn(1, 1, 4), torch.full((1, 1, 1, 2), 0.5), torch.randn(1, h * w, 4), torch.tensor([[h, w]]))
    assert torch.allclose(attn.last["sampling_locations"][0, 0, 0, 0, 0], torch.tensor([0.5 + 1 / w, 0.5 + 1 / h]))


def test_module_one_point_at_a_pixel_centre_reads_that_pixel():
    attn = MSDeformAttn(d_model=6, n_levels=1, n_heads=2, n_points=1)
    with torch.no_grad():
        attn.sampling_offsets.bias.zero_()
    h, w = 3, 4
    values = torch.randn(1, h * w, 6)
    reference = encoder_reference_points([[h, w]])[None, :, None, :]  # (1, HW, 1, 2)
    out = attn(torch.randn(1, h * w, 6), reference, values, torch.tensor([[h, w]]))
    assert torch.allclose(out, attn.output_proj(attn.value_proj(values)), atol=1e-5)


def test_module_rejects_mismatched_levels():
    attn = MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=1)
    with pytest.raises(ValueError, match="2 levels"):
        attn(torch.randn(1, 3, 8), torch.rand(1, 3, 2, 2), torch.randn(1, 16, 8), torch.tensor([[4, 4]]))
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttn(d_model=10, n_heads=4)
