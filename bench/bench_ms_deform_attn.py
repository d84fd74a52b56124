"""Time kit.ops.ms_deform_attn at CPU-scale sizes, next to dense attention over the same tokens.

    OMP_NUM_THREADS=1 python bench/bench_ms_deform_attn.py [--threads 1]

Encoder-style calls (every pixel of every level is a query) and decoder-style calls (100
queries), forward and forward + backward, for a growing pyramid. The dense column is
``torch.nn.functional.scaled_dot_product_attention`` with the same heads and channels over
all tokens (what DETR's encoder does); it grows with the square of the token count, the
deformable one linearly. Runs in about 20 s on one core.

What to expect on a CPU: the deformable op does over 30x fewer multiply-adds than dense attention
at 1360 tokens, yet it is not faster here. ``grid_sample`` reads D channels per sample
scattered over the map (memory-bound), while dense attention is a few large matrix products
(compute-bound, well optimised). The paper's speed comes from its CUDA kernel.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from kit.ops.ms_deform_attn import ms_deform_attn
from _timing import time_call  # bench/_timing.py, beside this script


def best_of(fn, repeats: int = 2) -> float:
    return time_call(fn, repeats)  # s


def deformable_call(value, shapes, queries, points, backward):
    n, _, heads, dim = value.shape
    locations = torch.rand(n, queries, heads, len(shapes), points, 2, requires_grad=backward)
    weights = torch.rand(n, queries, heads, len(shapes), points).softmax(-1).requires_grad_(backward)

    def run():
        out = ms_deform_attn(value, shapes, locations, weights)
        if backward:
            out.sum().backward()
    return run


def dense_call(value, queries, backward):
    n, s, heads, dim = value.shape
    q = torch.randn(n, heads, queries, dim, requires_grad=backward)
    kv = value.transpose(1, 2)  # (N, M, S, D)

    def run():
        out = F.scaled_dot_product_attention(q, kv, kv)
        if backward:
            out.sum().backward()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n, heads, dim, points = 2, 8, 32, 4
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); N={n}, M={heads}, D={dim}, P={points}")
    print(f"{'pyramid (H of each level)':<28}{'tokens':>7}{'queries':>8}{'pass':>10}{'deformable ms':>15}{'dense ms':>10}")
    started = time.perf_counter()
    for top in (8, 16, 32):
        shapes = [(top >> l, top >> l) for l in range(4) if top >> l >= 1]
        tokens = sum(h * w for h, w in shapes)
        for backward in (False, True):
            value = torch.randn(n, tokens, heads, dim, requires_grad=backward)
            for queries in (tokens, 100):
                deformable = best_of(deformable_call(value, torch.tensor(shapes), queries, points, backward))
                dense = best_of(dense_call(value, queries, backward))
                label = " / ".join(str(h) for h, _ in shapes)
                kind = "fwd+bwd" if backward else "forward"
                print(f"{label:<28}{tokens:>7}{queries:>8}{kind:>10}{1000 * deformable:>15.2f}{1000 * dense:>10.2f}")
    print(f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
