"""The Learnable Tree Filter: edge-aware aggregation along a minimum spanning tree (arXiv 1909.12513).

"Learnable Tree Filter for Structure-preserving Feature Transform" (Song et al., NeurIPS 2019)
connects every pixel to every other through the pixel grid's minimum spanning tree (MST) and
averages features with weights that decay along the tree path:

.. math:: y_i = \\frac{1}{z_i}\\sum_j S(E_{i,j})\\,x_j, \\qquad z_i = \\sum_j S(E_{i,j}), \\qquad
          S(E_{i,j}) = \\prod_{e \\in \\text{path}(i, j)} w_e = \\exp\\Big(-\\sum_{e} d_e\\Big),

with ``d_e = scale * ||g_k - g_m||^2`` for the tree edge ``e = (k, m)``. An MST edge never crosses a
strong boundary of the guidance when a path around it exists, so the weights stay inside regions.
``S`` is dense (every pair is connected) yet ``S x`` costs O(N): two passes over the tree.

1. Leaves -> root (aggregation): ``up_i = x_i + sum_{c in children(i)} w_c up_c``, where ``w_c`` is
   the weight of the edge from ``c`` to its parent; ``up_i`` sums ``S x`` over the subtree of ``i``.
2. Root -> leaves (propagation): ``out_root = up_root``;
   ``out_i = w_i out_parent(i) + (1 - w_i^2) up_i`` — the parent's total minus what ``i`` itself sent
   up (``w_i up_i``), carried down by ``w_i``, plus the subtree's own sum.
3. The same passes on ``x = 1`` give ``z``; ``y = out / z``.

Choices taken from the official code (StevenGrove/TreeFilter-Torch, ``furnace/kernels/
lib_tree_filter``: ``modules/tree_filter.py``, ``src/refine/refine.cu``, ``src/bfs/bfs.cu``):

* The MST graph is the 4-connected grid, edge cost ``||g_i - g_j||^2 + 1`` (``_build_feature_weight``;
  the ``+1`` also keeps zero-cost edges, which ``scipy.sparse.csgraph`` would drop). The tree is built
  without gradient (Borůvka there, ``scipy.sparse.csgraph.minimum_spanning_tree`` here).
* Breadth-first order from root vertex 0 (pixel (0, 0)); the filter is the same from any root.
* The filter's edge weight ``exp(-||e_k - e_m||^2)`` (``build_edge_weight``, ``norm2_distance``) is
  computed from a second tensor, the learned embedding, along the fixed tree edges, per channel group
  (the segmentation model uses 16 groups): features and embedding are split into ``groups`` contiguous
  channel chunks and group ``g`` of the features is filtered with weights from group ``g`` of the
  embedding. ``scale`` multiplies the distance (official: 1; the unscaled squared distance saturates
  ``exp(-d)`` for wide embeddings, which is why the official code logs edge-weight statistics).

Deviation: the official CUDA kernels walk the tree node by node and hand-write the backward pass. Here
each pass loops over the tree's depth levels (one batched tensor operation per level, all images and
channels at once) and autograd differentiates it — still linear in N, with gradients for the features
and the embedding. :func:`brute_force_tree_filter` builds the dense ``S`` (O(N^2), for tests and the
benchmark). Depth can approach N on a flat guidance (ties), so keep grids small on CPUs.

Long because the tree, the linear-time filter and its dense reference live side by side, so that a
reader can hold one against the other.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sparse
import torch
from scipy.sparse.csgraph import breadth_first_order, depth_first_order, minimum_spanning_tree, shortest_path

__all__ = ["GridTree", "grid_edges", "grid_mst", "edge_distances", "tree_filter", "pixel_weights",
           "brute_force_tree_filter", "tree_path_distances"]

MAX_CHILDREN = 4  # a pixel of the 4-connected grid has at most 4 tree neighbours below it


@dataclass(frozen=True, eq=False)
class GridTree:
    """Per image, a spanning tree of the ``height x width`` pixel grid in breadth-first order.

    Pixels are row-major indices ``row * width + col``. Position ``k`` of the BFS order holds pixel
    ``order[b, k]``, its parent pixel ``parent[b, k]`` (-1 at the root, ``k = 0``), its children
    ``children[b, k]`` (pixels, -1 padded) and its depth ``depth[b, k]``. ``levels`` is what the filter
    loops over: for depth ``d``, the flat indices ``b * N + pixel`` of its nodes and, for each, the slot
    of its parent among the nodes of depth ``d - 1``; ``level_of`` maps a flat index to its position
    in the concatenation of the levels.
    """
    height: int
    width: int
    order: torch.Tensor      # (B, N) int64
    parent: torch.Tensor     # (B, N) int64
    children: torch.Tensor   # (B, N, 4) int64
    depth: torch.Tensor      # (B, N) int64
    levels: tuple            # ((nodes_d (n_d,), parent_slot_d (n_d,)), ...) for d = 0..D
    level_of: torch.Tensor   # (B * N,) int64

    @property
    def batch(self) -> int:
        return self.order.shape[0]

    @property
    def edges(self) -> torch.Tensor:
        """(B, N - 1, 2) tree edges as (child pixel, parent pixel) pairs, in BFS order."""
        return torch.stack([self.order[:, 1:], self.parent[:, 1:]], dim=-1)

    def to(self, device) -> "GridTree":
        """The same tree with its index tensors on ``device`` (saves the filter one copy per level and call)."""
        move = lambda t: t.to(device)  # noqa: E731
        return GridTree(self.height, self.width, move(self.order), move(self.parent), move(self.children),
                        move(self.depth), tuple((move(n), move(s)) for n, s in self.levels), move(self.level_of))

    def parent_of(self) -> torch.Tensor:
        """(B, N) parent pixel indexed by pixel (the root is its own parent)."""
        result = torch.empty_like(self.order)
        result.scatter_(1, self.order, self.parent)
        root = self.order[:, :1]
        return result.scatter(1, root, root)


def grid_edges(height: int, width: int) -> np.ndarray:
    """(E, 2) pixel pairs of the 4-connected grid: vertical edges first, then horizontal (official order)."""
    index = np.arange(height * width).reshape(height, width)
    vertical = np.stack([index[:-1, :], index[1:, :]], -1).reshape(-1, 2)
    horizontal = np.stack([index[:, :-1], index[:, 1:]], -1).reshape(-1, 2)
    return np.concatenate([vertical, horizontal])


def _check_map(name: str, tensor, dims: str = "(B, C, H, W)") -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {dims}, got {type(tensor).__name__}")
    if tensor.dim() != 4:
        raise ValueError(f"{name} must be {dims}, got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
    if tensor.shape[1] == 0 or tensor.shape[2] == 0 or tensor.shape[3] == 0:
        raise ValueError(f"{name} must have >= 1 channel and a non-empty map, got shape {tuple(tensor.shape)}")
    bad = int((~torch.isfinite(tensor.detach())).sum())
    if bad:
        raise ValueError(f"{name} has {bad} non-finite values (NaN or inf); all must be finite")


def _bfs_tree(costs: np.ndarray, edges: np.ndarray, num_pixels: int, root: int):
    """One image: MST of the grid with these edge costs, then its BFS order, parents and depths."""
    graph = sparse.coo_matrix((costs, (edges[:, 0], edges[:, 1])), shape=(num_pixels, num_pixels)).tocsr()
    tree = minimum_spanning_tree(graph)  # (N, N), N - 1 stored entries
    order, predecessors = breadth_first_order(tree, root, directed=False, return_predecessors=True)
    if order.size != num_pixels:  # cannot happen on a connected grid with positive costs
        raise RuntimeError(f"the MST reaches {order.size} of {num_pixels} pixels")
    parent = predecessors[order]
    parent[0] = -1  # scipy marks the root with -9999
    hops = shortest_path(tree, directed=False, unweighted=True, indices=root)  # (N,) edges from the root
    return order, parent, hops[order].astype(np.int64)


def _levels(order: np.ndarray, parent: np.ndarray, depth: np.ndarray):
    """Children and the depth levels (flat indices, parent slots) of B trees given in BFS order."""
    batch, n = order.shape
    children = np.full((batch, n, MAX_CHILDREN), -1, dtype=np.int64)
    for b in range(batch):
        position = np.empty(n, dtype=np.int64)
        position[order[b]] = np.arange(n)
        parent_position = position[parent[b, 1:]]  # (N - 1,) BFS positions of the parents, non-decreasing
        sibling_rank = np.arange(n - 1) - np.searchsorted(parent_position, parent_position)  # siblings are adjacent
        children[b, parent_position, sibling_rank] = order[b, 1:]
    flat = (order + n * np.arange(batch)[:, None]).reshape(-1)
    flat_parent = np.where(parent < 0, -1, parent + n * np.arange(batch)[:, None]).reshape(-1)
    by_level = np.argsort(depth.reshape(-1), kind="stable")  # level-major, then image, then BFS
    sorted_depth = depth.reshape(-1)[by_level]
    level_of = np.empty(batch * n, dtype=np.int64)
    level_of[flat[by_level]] = np.arange(batch * n)
    max_depth = int(sorted_depth[-1]) if batch else -1
    starts = np.searchsorted(sorted_depth, np.arange(max_depth + 2))  # starts[d]: first node of depth >= d
    levels = []
    for d in range(max_depth + 1):
        members = by_level[starts[d]:starts[d + 1]]
        nodes = flat[members]
        parent_slot = level_of[flat_parent[members]] - starts[d - 1] if d else np.zeros_like(nodes)
        levels.append((torch.from_numpy(nodes), torch.from_numpy(parent_slot)))
    return children, tuple(levels), level_of


def grid_mst(guidance: torch.Tensor, root: int = 0) -> GridTree:
    """Per image, the MST of the 4-connected grid under costs ``||g_i - g_j||^2 + 1``, in BFS order.

    guidance: (B, C, H, W), detached (the tree is not differentiated). root: pixel index to start
    the breadth-first order from (official: 0).
    """
    _check_map("guidance", guidance)
    batch, channels, height, width = guidance.shape
    n = height * width
    if isinstance(root, bool) or not isinstance(root, int) or not 0 <= root < n:
        raise ValueError(f"root must be a pixel index in [0, {n}), got {root!r}")
    g = guidance.detach().to("cpu", torch.float64).reshape(batch, channels, n).numpy()  # (B, C, N)
    edges = grid_edges(height, width)  # (E, 2)
    costs = ((g[:, :, edges[:, 0]] - g[:, :, edges[:, 1]]) ** 2).sum(1) + 1  # (B, E)
    order, parent, depth = (np.zeros((batch, n), dtype=np.int64) for _ in range(3))
    for b in range(batch):
        order[b], parent[b], depth[b] = _bfs_tree(costs[b], edges, n, root)
    children, levels, level_of = _levels(order, parent, depth)
    return GridTree(height, width, torch.from_numpy(order), torch.from_numpy(parent),
                    torch.from_numpy(children), torch.from_numpy(depth), levels, torch.from_numpy(level_of))


def _check_tree(tree, batch: int, height: int, width: int) -> None:
    if not isinstance(tree, GridTree):
        raise TypeError(f"tree must be a GridTree from grid_mst, got {type(tree).__name__}")
    if (tree.batch, tree.height, tree.width) != (batch, height, width):
        raise ValueError(f"tree is for {tree.batch} images of {tree.height}x{tree.width}, "
                         f"the maps are {batch} images of {height}x{width}")


def edge_distances(guidance: torch.Tensor, tree: GridTree, groups: int = 1, scale: float = 1.0) -> torch.Tensor:
    """(B * N, G) ``scale * ||g_pixel - g_parent||^2`` per group, flat index ``b * N + pixel`` (root: 0).

    Differentiable with respect to ``guidance`` (B, Ce, H, W); the tree's edges are fixed.
    """
    batch, channels, height, width = guidance.shape
    n = height * width
    g = guidance.reshape(batch, groups, channels // groups, n)  # (B, G, Ce/G, N)
    parent = tree.parent_of().to(guidance.device)  # (B, N)
    g_parent = torch.gather(g, 3, parent[:, None, None, :].expand_as(g))
    distance = scale * ((g - g_parent) ** 2).sum(2)  # (B, G, N)
    return distance.permute(0, 2, 1).reshape(batch * n, groups)


def _check_filter_args(features, guidance, tree, groups, scale) -> None:
    _check_map("features", features)
    _check_map("guidance", guidance, "(B, Ce, H, W)")
    if guidance.shape[0] != features.shape[0] or guidance.shape[2:] != features.shape[2:]:
        raise ValueError(f"guidance {tuple(guidance.shape)} must have the batch and map size of "
                         f"features {tuple(features.shape)}")
    if guidance.dtype != features.dtype:
        raise TypeError(f"guidance has dtype {guidance.dtype}; expected {features.dtype}, the features' dtype")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be an int >= 1, got {groups!r}")
    if features.shape[1] % groups or guidance.shape[1] % groups:
        raise ValueError(f"groups = {groups} must divide the channels of features ({features.shape[1]}) "
                         f"and guidance ({guidance.shape[1]})")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not np.isfinite(scale) or scale < 0:
        raise ValueError(f"scale must be a finite number >= 0, got {scale!r}")
    _check_tree(tree, *features.shape[:1], *features.shape[2:])


def _two_passes(values: torch.Tensor, weights: torch.Tensor, tree: GridTree) -> torch.Tensor:
    """``S @ values`` on every tree: values (B * N, G, K) and edge weights (B * N, G), flat pixel index."""
    levels = [(nodes.to(values.device), slot.to(values.device)) for nodes, slot in tree.levels]
    # one gather into level order, then views per level (a gather per level would cost O(N) each backward)
    level_order, sizes = torch.cat([nodes for nodes, _ in levels]), [len(nodes) for nodes, _ in levels]
    x = values[level_order].split(sizes)                 # per level (n_d, G, K)
    w = weights[level_order][..., None].split(sizes)     # per level (n_d, G, 1)
    # pass 1, leaves -> root: up_i = x_i + sum over children of w_c up_c
    up = [None] * len(levels)
    up[-1] = x[-1]
    for d in range(len(levels) - 2, -1, -1):
        sent = w[d + 1] * up[d + 1]  # (n_{d+1}, G, K), what each child sends to its parent
        up[d] = x[d].index_add(0, levels[d + 1][1], sent)
    # pass 2, root -> leaves: out_i = w_i out_parent + (1 - w_i^2) up_i
    out = [up[0]]
    for d in range(1, len(levels)):
        out.append(w[d] * out[d - 1][levels[d][1]] + (1 - w[d] ** 2) * up[d])
    return torch.cat(out)[tree.level_of.to(values.device)]  # back to flat pixel order (B * N, G, K)


def _grouped(features: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, C, H, W) -> (B * N, G, C / G)."""
    batch, channels = features.shape[:2]
    return features.reshape(batch, groups, channels // groups, -1).permute(0, 3, 1, 2).reshape(
        -1, groups, channels // groups)


def tree_filter(features: torch.Tensor, guidance: torch.Tensor, tree: GridTree, groups: int = 1,
                scale: float = 1.0) -> torch.Tensor:
    """y = S x / S 1 along ``tree``: features (B, C, H, W), guidance (B, Ce, H, W) -> (B, C, H, W).

    ``guidance`` is the filter's embedding (it may differ from the tensor the tree was built from);
    edge weights ``exp(-scale ||g_k - g_m||^2)`` per group of ``Ce / groups`` channels filter the
    matching ``C / groups`` feature channels. Differentiable w.r.t. features and guidance.
    """
    _check_filter_args(features, guidance, tree, groups, scale)
    batch, channels, height, width = features.shape
    if batch == 0:
        return features.clone()
    weights = torch.exp(-edge_distances(guidance, tree, groups, scale))  # (B * N, G)
    x = _grouped(features, groups)  # (B * N, G, C / G)
    ones = torch.ones_like(x[..., :1])
    filtered = _two_passes(torch.cat([x, ones], -1), weights, tree)  # (B * N, G, C / G + 1)
    y = filtered[..., :-1] / filtered[..., -1:]  # divide by z_i, the filtered ones
    return y.reshape(batch, height * width, channels).permute(0, 2, 1).reshape(batch, channels, height, width)


def pixel_weights(guidance: torch.Tensor, tree: GridTree, row: int, col: int, image: int = 0,
                  group: int = 0, groups: int = 1, scale: float = 1.0) -> torch.Tensor:
    """(H, W) the weights ``S(E_{i,j}) / z_i`` pixel ``i = (row, col)`` of ``image`` gives every pixel j.

    The row of the normalised filter matrix: ``y_i = sum_j weights[j] x_j``; non-negative, sums to 1.
    ``S`` is symmetric, so its row is the unnormalised filter of a one-hot image at ``i``.
    """
    _check_map("guidance", guidance, "(B, Ce, H, W)")
    height, width = guidance.shape[-2:]
    if not (0 <= row < height and 0 <= col < width):
        raise ValueError(f"pixel (row, col) = ({row}, {col}) lies outside the {height}x{width} map")
    if not 0 <= image < guidance.shape[0] or not 0 <= group < groups:
        raise ValueError(f"image must be in [0, {guidance.shape[0]}) and group in [0, {groups}), "
                         f"got {image} and {group}")
    one_hot = torch.zeros(guidance.shape[0], groups, height, width, dtype=guidance.dtype, device=guidance.device)
    one_hot[image, :, row, col] = 1
    _check_filter_args(one_hot, guidance, tree, groups, scale)
    weights = torch.exp(-edge_distances(guidance, tree, groups, scale))
    column = _two_passes(_grouped(one_hot, groups), weights, tree)  # (B * N, G, 1): S e_i
    n = height * width
    column = column[image * n:(image + 1) * n, group, 0]  # (N,)
    return (column / column.sum()).reshape(height, width)  # z_i = sum_j S_ij


def tree_path_distances(distances: torch.Tensor, parent: np.ndarray, root: int) -> torch.Tensor:
    """(N, N) the sum of ``distances`` (N,) — edge to the parent, root 0 — over every tree path.

    ``D_ij = a_i + a_j - 2 a_lca(i, j)`` with ``a`` the distance from the root; the lowest common
    ancestors come from a depth-first order (numpy, not differentiated), ``a`` is differentiable.
    """
    n = parent.size
    child = np.flatnonzero(np.arange(n) != root)
    graph = sparse.coo_matrix((np.ones(n - 1), (child, parent[child])), shape=(n, n)).tocsr()
    dfs, _ = depth_first_order(graph, root, directed=False)
    entry = np.empty(n, dtype=np.int64)
    entry[dfs] = np.arange(n)
    size = np.ones(n, dtype=np.int64)
    for node in dfs[:0:-1]:  # children before parents
        size[parent[node]] += size[node]
    lca = np.empty((n, n), dtype=np.int64)  # rows: pixel i; columns: pixel j in DFS position
    lca[root] = root
    for node in dfs[1:]:  # parents before children: the row of i is its parent's, but its subtree is i
        lca[node] = lca[parent[node]]
        lca[node, entry[node]:entry[node] + size[node]] = node
    lca = torch.from_numpy(lca[:, entry]).to(distances.device)  # columns back in pixel order
    below = (entry[:, None] <= entry[None, :]) & (entry[None, :] < (entry + size)[:, None])  # (N, N) j under k
    from_root = torch.from_numpy(below).to(distances).T @ distances  # (N,) a_j = sum of d_k, k ancestor of j
    return from_root[:, None] + from_root[None, :] - 2 * from_root[lca]


def brute_force_tree_filter(features: torch.Tensor, guidance: torch.Tensor, tree: GridTree, groups: int = 1,
                            scale: float = 1.0) -> torch.Tensor:
    """The O(N^2) reference: the dense ``S = exp(-D)`` from all tree-path distances, then ``S x / S 1``."""
    _check_filter_args(features, guidance, tree, groups, scale)
    batch, channels, height, width = features.shape
    n = height * width
    distance = edge_distances(guidance, tree, groups, scale).reshape(batch, n, groups)
    parent = tree.parent_of().cpu().numpy()
    outputs = []
    for b in range(batch):
        x = features[b].reshape(groups, channels // groups, n)  # (G, C / G, N)
        root = int(tree.order[b, 0])
        rows = []
        for g in range(groups):
            s = torch.exp(-tree_path_distances(distance[b, :, g], parent[b], root))  # (N, N)
            rows.append((x[g] @ s) / s.sum(0))  # S symmetric: (C/G, N) @ (N, N)
        outputs.append(torch.stack(rows).reshape(channels, height, width))
    return torch.stack(outputs)
