"""The Learnable Tree Filter (kit.ops.tree_filter): MST against networkx, two passes against the dense
O(N^2) reference, path distances against scipy's shortest paths, gradients against gradcheck, and
the catalog's invariants (constant input, weights summing to 1, root independence, limits of the
edge weight, no mixing across a strong guidance edge)."""
import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sparse
import torch
from scipy.sparse.csgraph import shortest_path

from kit.ops.tree_filter import (brute_force_tree_filter, grid_edges, grid_mst, pixel_weights, tree_filter,
                                 tree_path_distances)

SIZES = [(1, 1), (1, 9), (5, 7), (8, 8), (6, 11)]


def random_maps(batch, channels, embed_channels, height, width, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, channels, height, width, generator=gen, dtype=dtype)
    guidance = torch.randn(batch, embed_channels, height, width, generator=gen, dtype=dtype)
    return features, guidance


def two_regions(height=8, width=10, step=4.0, dtype=torch.float64):
    """(1, 1, H, W) guidance 0 on the left half and ``step`` on the right half."""
    guidance = torch.zeros(1, 1, height, width, dtype=dtype)
    guidance[..., width // 2:] = step
    return guidance


def networkx_mst_weight(guidance: np.ndarray) -> float:
    """Total cost of networkx's MST of one image's grid, costs ||g_i - g_j||^2 + 1 (the official)."""
    channels, height, width = guidance.shape
    graph = nx.Graph()
    for a, b in grid_edges(height, width):
        ga, gb = guidance[:, a // width, a % width], guidance[:, b // width, b % width]
        graph.add_edge(int(a), int(b), weight=float(((ga - gb) ** 2).sum() + 1))
    return nx.minimum_spanning_tree(graph).size(weight="weight")


@pytest.mark.parametrize("height, width", [(1, 9), (5, 7), (8, 8), (6, 11)])
def test_mst_has_networkx_total_weight_and_spans_the_grid(height, width):
    _, guidance = random_maps(3, 1, 4, height, width, seed=height * width)
    tree = grid_mst(guidance)
    n = height * width
    assert tree.order.shape == (3, n) and tree.edges.shape == (3, n - 1, 2)
    grid = {tuple(sorted(map(int, e))) for e in grid_edges(height, width)}
    for b in range(3):
        g = guidance[b].numpy()
        assert sorted(tree.order[b].tolist()) == list(range(n))  # every pixel once
        edges = [tuple(sorted(map(int, e))) for e in tree.edges[b]]
        assert set(edges) <= grid and len(set(edges)) == n - 1  # N - 1 distinct grid edges
        assert nx.is_tree(nx.Graph(edges))  # connected, acyclic
        ours = sum(((g[:, a // width, a % width] - g[:, c // width, c % width]) ** 2).sum() + 1 for a, c in edges)
        assert abs(ours - networkx_mst_weight(g)) < 1e-9


def test_bfs_order_puts_parents_first_and_depths_step_by_one():
    _, guidance = random_maps(2, 1, 3, 7, 9, seed=1)
    tree = grid_mst(guidance)
    for b in range(2):
        position = {int(p): k for k, p in enumerate(tree.order[b])}
        assert tree.order[b, 0] == 0 and tree.parent[b, 0] == -1 and tree.depth[b, 0] == 0
        for k in range(1, 63):
            parent_position = position[int(tree.parent[b, k])]
            assert parent_position < k
            assert tree.depth[b, k] == tree.depth[b, parent_position] + 1
            assert int(tree.order[b, k]) in tree.children[b, parent_position].tolist()
        assert int((tree.children[b] >= 0).sum()) == 62  # every non-root is one child
    assert len(tree.levels) == int(tree.depth.max()) + 1


def test_path_distances_equal_scipy_shortest_paths_on_the_tree():
    _, guidance = random_maps(1, 1, 2, 6, 7, seed=2)
    tree = grid_mst(guidance)
    parent = tree.parent_of()[0].numpy()
    gen = np.random.default_rng(0)
    distances = gen.uniform(0.1, 2.0, 42)
    distances[0] = 0.0  # the root's (unused) edge
    child = np.arange(1, 42)
    graph = sparse.coo_matrix((distances[child], (child, parent[child])), shape=(42, 42))
    expected = shortest_path(graph, directed=False)
    ours = tree_path_distances(torch.from_numpy(distances), parent, 0).numpy()
    assert np.abs(ours - expected).max() < 1e-12


@pytest.mark.parametrize("height, width", SIZES)
@pytest.mark.parametrize("groups", [1, 2])
def test_two_passes_equal_the_brute_force(height, width, groups):
    features, guidance = random_maps(3, 4, 6, height, width, seed=10 * height + width)
    tree = grid_mst(guidance[:, :2])  # the tree's guide and the filter's embedding differ, as official
    for scale in (0.3, 1.0):
        fast = tree_filter(features, guidance, tree, groups=groups, scale=scale)
        slow = brute_force_tree_filter(features, guidance, tree, groups=groups, scale=scale)
        assert fast.shape == features.shape
        assert (fast - slow).abs().max() < 1e-6


def test_gradcheck_features_and_guidance():
    features, guidance = random_maps(2, 2, 4, 3, 4, seed=5)
    tree = grid_mst(guidance)
    features.requires_grad_(True)
    guidance = (0.5 * guidance).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f, g: tree_filter(f, g, tree, groups=2), (features, guidance))
    assert torch.autograd.gradcheck(lambda f, g: tree_filter(f, g, tree, scale=0.7), (features, guidance))


def test_gradients_equal_the_brute_forces():
    features, guidance = random_maps(2, 3, 3, 5, 6, seed=6)
    tree = grid_mst(guidance)
    upstream = torch.randn(features.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = []
    for op in (tree_filter, brute_force_tree_filter):
        f, g = features.clone().requires_grad_(True), guidance.clone().requires_grad_(True)
        op(f, g, tree, scale=0.5).backward(upstream)
        grads.append((f.grad, g.grad))
    assert (grads[0][0] - grads[1][0]).abs().max() < 1e-10
    assert (grads[0][1] - grads[1][1]).abs().max() < 1e-10
    assert grads[0][1].abs().max() > 1e-3  # the embedding really receives a gradient


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_input_stays_constant(dtype):
    _, guidance = random_maps(2, 1, 5, 9, 9, seed=7, dtype=dtype)
    features = torch.full((2, 3, 9, 9), 2.5, dtype=dtype)
    out = tree_filter(features, guidance, grid_mst(guidance))
    assert (out - 2.5).abs().max() < (1e-5 if dtype == torch.float32 else 1e-12)


def test_pixel_weights_are_a_convex_row_of_the_filter():
    features, guidance = random_maps(2, 2, 3, 6, 7, seed=8)
    tree = grid_mst(guidance)
    out = tree_filter(features, guidance, tree, scale=0.4)
    for image, row, col in ((0, 0, 0), (1, 3, 5), (1, 5, 6)):
        weights = pixel_weights(guidance, tree, row, col, image=image, scale=0.4)
        assert weights.shape == (6, 7) and weights.min() >= 0
        assert abs(float(weights.sum()) - 1) < 1e-12
        assert torch.allclose((weights * features[image]).sum((-2, -1)), out[image, :, row, col], atol=1e-12)


def test_output_does_not_depend_on_the_root():
    features, guidance = random_maps(2, 3, 3, 6, 6, seed=9)
    reference = tree_filter(features, guidance, grid_mst(guidance), scale=0.5)
    for root in (7, 35):
        assert (tree_filter(features, guidance, grid_mst(guidance, root=root), scale=0.5) - reference).abs().max() < 1e-12


def test_edge_weight_limits_identity_and_global_mean():
    features, guidance = random_maps(2, 3, 3, 5, 6, seed=11)
    tree = grid_mst(guidance)
    assert torch.allclose(tree_filter(features, guidance, tree, scale=0.0),
                          features.mean((-2, -1), keepdim=True).expand_as(features), atol=1e-12)  # all w = 1
    assert torch.allclose(tree_filter(features, guidance, tree, scale=1e4), features, atol=1e-8)  # all w -> 0


def test_a_strong_guidance_edge_stops_the_mixing():
    guidance = two_regions(8, 10, step=4.0)  # w across = exp(-16)
    tree = grid_mst(guidance)
    crossing = [(int(a), int(b)) for a, b in tree.edges[0] if (int(a) % 10 < 5) != (int(b) % 10 < 5)]
    assert len(crossing) == 1  # the MST crosses the boundary once
    weights = pixel_weights(guidance, tree, row=4, col=4)  # next to the boundary, on the left
    across, within = float(weights[:, 5:].sum()), float(weights[:, :5].sum())
    assert across < 1e-6 * within
    labels = (guidance > 0).double().expand(1, 2, 8, 10)
    assert (tree_filter(labels, guidance, tree) - labels).abs().max() < 1e-6  # the two regions stay apart


def test_empty_batch_is_legitimate():
    features, guidance = random_maps(0, 2, 2, 4, 4)
    tree = grid_mst(guidance)
    assert tree.order.shape == (0, 16) and tree_filter(features, guidance, tree).shape == (0, 2, 4, 4)


def test_a_tree_moved_to_a_device_filters_the_same():
    features, guidance = random_maps(2, 2, 2, 4, 5, seed=12)
    tree = grid_mst(guidance)
    moved = tree.to(features.device)
    assert torch.equal(tree_filter(features, guidance, moved), tree_filter(features, guidance, tree))
    assert len(moved.levels) == len(tree.levels) and torch.equal(moved.level_of, tree.level_of)
