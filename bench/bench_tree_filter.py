"""Time the Learnable Tree Filter's two passes (kit.ops.tree_filter) beside the dense O(N^2) reference.

Batch 4, 16 feature channels, a 16-channel random embedding (scale 0.1) that is also the MST's guide,
maps of 16^2, 32^2 and 64^2 pixels (256 to 4096 nodes). Each call is one forward and one backward
(gradients for the features and the embedding) with the same upstream gradient; the MST itself
(scipy, once per batch, no gradient) is timed apart. Also the depth of the trees (the two passes loop
over depth levels) and the largest difference between the two results. The brute force includes its
numpy bookkeeping (lowest common ancestors) as it is part of that call. Threads: ``KIT_THREADS`` if set,
else the cores available (``kit.setup``). Runs in about a minute on two cores.
"""
from __future__ import annotations

import torch

import kit
from kit.ops.tree_filter import brute_force_tree_filter, grid_mst, tree_filter
from _timing import time_call  # bench/_timing.py, beside this script

BATCH, CHANNELS, SCALE = 4, 16, 0.1


def forward_backward(op, features, guidance, tree, upstream):
    def call():
        features.grad = guidance.grad = None
        op(features, guidance, tree, scale=SCALE).backward(upstream)
    return call


def main():
    kit.setup(0)
    generator = torch.Generator().manual_seed(0)
    print(f"Tree filter, batch {BATCH}, {CHANNELS} channels, 16-channel embedding, forward + backward, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"{'map':>6} {'nodes':>6} {'depth':>6} {'MST':>9} {'two-pass':>10} {'brute force':>12} {'ratio':>7} "
          f"{'max |diff|':>11}")
    for side in (16, 32, 64):
        features = torch.randn(BATCH, CHANNELS, side, side, generator=generator, requires_grad=True)
        guidance = torch.randn(BATCH, 16, side, side, generator=generator, requires_grad=True)
        upstream = torch.randn(BATCH, CHANNELS, side, side, generator=generator)
        mst_ms = 1000 * time_call(lambda: grid_mst(guidance))
        tree = grid_mst(guidance)
        with torch.no_grad():
            difference = float((tree_filter(features, guidance, tree, scale=SCALE)
                                - brute_force_tree_filter(features, guidance, tree, scale=SCALE)).abs().max())
        fast_ms = 1000 * time_call(forward_backward(tree_filter, features, guidance, tree, upstream))
        slow_ms = 1000 * time_call(forward_backward(brute_force_tree_filter, features, guidance, tree, upstream),
                                   repeats=1)
        depth = int(tree.depth.max())
        print(f"{side:>4}^2 {side * side:>6} {depth:>6} {mst_ms:>7.1f}ms {fast_ms:>8.1f}ms {slow_ms:>10.1f}ms "
              f"{slow_ms / fast_ms:>6.1f}x {difference:>11.1e}")
    print("depth: the deepest tree of the batch from root pixel 0; ratio: brute force / two-pass")


if __name__ == "__main__":
    main()
