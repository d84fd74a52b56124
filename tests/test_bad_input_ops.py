"""Bad input to the operators in kit.ops that have no row elsewhere (the tree filter).

One table of inputs that must be refused (the exception type and a phrase of its message), then
the cases that must work: valid calls are unchanged by the checks.
"""
import pytest
import torch

from kit.ops.tree_filter import brute_force_tree_filter, grid_mst, pixel_weights, tree_filter

GEN = torch.Generator().manual_seed(0)
FEATURES = torch.randn(2, 4, 5, 6, generator=GEN)
GUIDANCE = torch.randn(2, 2, 5, 6, generator=GEN)
TREE = grid_mst(GUIDANCE)


def with_value(shape, value):
    tensor = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    tensor[0, 0, 1, 2] = value
    return tensor


def filter_with(features=None, guidance=None, tree=None, op=tree_filter, **kw):
    """tree_filter on two 4-channel 5x6 maps with one bad piece swapped in."""
    return lambda: op(FEATURES if features is None else features, GUIDANCE if guidance is None else guidance,
                      TREE if tree is None else tree, **kw)


BAD = [
    # -- the grid's minimum spanning tree
    ("mst-not-a-tensor", lambda: grid_mst(GUIDANCE.numpy()), TypeError, r"guidance must be a torch.Tensor"),
    ("mst-3d-guidance", lambda: grid_mst(GUIDANCE[0]), ValueError, r"guidance must be \(B, C, H, W\), got shape \(2, 5, 6\)"),
    ("mst-integer-guidance", lambda: grid_mst(GUIDANCE.long()), TypeError, r"guidance must be a floating-point tensor"),
    ("mst-nan-guidance", lambda: grid_mst(with_value((1, 2, 4, 4), float("nan"))), ValueError,
     r"guidance has 1 non-finite values \(NaN or inf\)"),
    ("mst-inf-guidance", lambda: grid_mst(with_value((1, 2, 4, 4), float("inf"))), ValueError, r"guidance has 1 non-finite"),
    ("mst-empty-map", lambda: grid_mst(torch.zeros(1, 2, 0, 4)), ValueError, r"non-empty map"),
    ("mst-no-channels", lambda: grid_mst(torch.zeros(1, 0, 4, 4)), ValueError, r">= 1 channel"),
    ("mst-root-outside", lambda: grid_mst(GUIDANCE, root=30), ValueError, r"root must be a pixel index in \[0, 30\), got 30"),
    ("mst-float-root", lambda: grid_mst(GUIDANCE, root=1.0), ValueError, r"root must be a pixel index"),
    # -- the two-pass filter
    ("filter-3d-features", filter_with(features=FEATURES[0]), ValueError, r"features must be \(B, C, H, W\)"),
    ("filter-integer-features", filter_with(features=FEATURES.long()), TypeError, r"features must be a floating-point"),
    ("filter-nan-features", filter_with(features=with_value((2, 4, 5, 6), float("nan"))), ValueError,
     r"features has 1 non-finite values"),
    ("filter-inf-guidance", filter_with(guidance=with_value((2, 2, 5, 6), float("-inf"))), ValueError,
     r"guidance has 1 non-finite values"),
    ("filter-guidance-batch", filter_with(guidance=GUIDANCE[:1]), ValueError,
     r"guidance \(1, 2, 5, 6\) must have the batch and map size of features \(2, 4, 5, 6\)"),
    ("filter-guidance-size", filter_with(guidance=torch.randn(2, 2, 5, 5)), ValueError, r"must have the batch and map size"),
    ("filter-guidance-dtype", filter_with(guidance=GUIDANCE.double()), TypeError,
     r"guidance has dtype torch.float64; expected torch.float32"),
    ("filter-groups-0", filter_with(groups=0), ValueError, r"groups must be an int >= 1, got 0"),
    ("filter-groups-not-dividing", filter_with(groups=4), ValueError,
     r"groups = 4 must divide the channels of features \(4\) and guidance \(2\)"),
    ("filter-negative-scale", filter_with(scale=-1.0), ValueError, r"scale must be a finite number >= 0, got -1.0"),
    ("filter-nan-scale", filter_with(scale=float("nan")), ValueError, r"scale must be a finite number >= 0"),
    ("filter-tree-not-a-tree", filter_with(tree=TREE.edges), TypeError, r"tree must be a GridTree from grid_mst, got Tensor"),
    ("filter-tree-other-size", filter_with(tree=grid_mst(torch.randn(2, 2, 6, 5))), ValueError,
     r"tree is for 2 images of 6x5, the maps are 2 images of 5x6"),
    ("filter-tree-other-batch", filter_with(tree=grid_mst(GUIDANCE[:1])), ValueError, r"tree is for 1 images"),
    ("brute-force-nan-features", filter_with(features=with_value((2, 4, 5, 6), float("nan")), op=brute_force_tree_filter),
     ValueError, r"features has 1 non-finite"),
    # -- one pixel's weights
    ("weights-pixel-outside", lambda: pixel_weights(GUIDANCE, TREE, 5, 0), ValueError,
     r"pixel \(row, col\) = \(5, 0\) lies outside the 5x6 map"),
    ("weights-image-outside", lambda: pixel_weights(GUIDANCE, TREE, 0, 0, image=2), ValueError,
     r"image must be in \[0, 2\) and group in \[0, 1\)"),
    ("weights-guidance-not-a-tensor", lambda: pixel_weights(GUIDANCE.numpy(), TREE, 0, 0), TypeError,
     r"guidance must be a torch.Tensor"),
    ("weights-nan-guidance", lambda: pixel_weights(with_value((2, 2, 5, 6), float("nan")), TREE, 0, 0), ValueError,
     r"guidance has 1 non-finite"),
]


@pytest.mark.parametrize("case, call, error, phrase", BAD, ids=[row[0] for row in BAD])
def test_bad_input_is_refused(case, call, error, phrase):
    with pytest.raises(error, match=phrase):
        call()


def test_valid_calls_are_unchanged():
    out = tree_filter(FEATURES, GUIDANCE, TREE, groups=2, scale=0.5)
    assert out.shape == FEATURES.shape and torch.isfinite(out).all()
    assert torch.allclose(out, brute_force_tree_filter(FEATURES, GUIDANCE, TREE, groups=2, scale=0.5), atol=1e-5)
    weights = pixel_weights(GUIDANCE, TREE, 4, 5, image=1)
    assert weights.shape == (5, 6) and abs(float(weights.sum()) - 1) < 1e-5
