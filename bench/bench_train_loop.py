"""Per-step cost of :func:`kit.train.train`'s own loop, against a bare optimisation loop.

Both loops run the same steps of the same tiny model on the same batches (one thread, CPU, or the
GPU with ``--device cuda``): set the learning rate, take the batch, forward, backward, optimiser
step. The bare loop does nothing else; ``kit.train`` also checks the losses, keeps the history
row and (with ``progress``) updates the progress bar. The difference per step is the loop's own
overhead: what a tiny model makes visible and a real detector's step hides.

    python bench/bench_train_loop.py [--steps 400] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import time_call  # noqa: E402

from kit.train import epoch_sampler, train, warmup_cosine  # noqa: E402


def problem(device: torch.device, width: int):
    """A two-layer MLP on 256 random items, batches of 16, and its loss."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, width), torch.nn.ReLU(), torch.nn.Linear(width, 1)).to(device)
    x, y = torch.randn(256, 8, device=device), torch.randn(256, 1, device=device)
    sampler = epoch_sampler(256, 16, seed=0)
    batch_for = lambda step: (x[sampler(step).to(device)], y[sampler(step).to(device)])
    loss_for = lambda m, batch, step: {"mse": torch.nn.functional.mse_loss(m(batch[0]), batch[1])}
    return model, batch_for, loss_for


def bare_loop(model, batch_for, loss_for, steps: int, optimizer, lr_at) -> None:
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        losses = loss_for(model, batch_for(step), step)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
    if model[0].weight.is_cuda:
        torch.cuda.synchronize()


def per_step(device: torch.device, width: int, steps: int, loop: str) -> float:
    """Seconds per step of one loop (best of 3 timed runs after a warm-up)."""
    def once():
        model, batch_for, loss_for = problem(device, width)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        lr_at = warmup_cosine(0.01, steps, warmup=steps // 10)
        if loop == "bare":
            bare_loop(model, batch_for, loss_for, steps, optimizer, lr_at)
        else:
            with contextlib.redirect_stderr(io.StringIO()):  # the bar's text is not the point here
                train(model, batch_for, loss_for, steps, optimizer, lr_at=lr_at, amp=False,
                      progress=loop == "kit.train with bar")
            if device.type == "cuda":
                torch.cuda.synchronize()

    return time_call(once, repeats=3) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    print(f"{args.steps} steps, {device}, 1 thread; microseconds per step (best of 3)")
    print(f"{'hidden width':>12} {'bare loop':>10} {'kit.train':>10} {'with bar':>10} {'overhead':>9} {'ratio':>6}")
    for width in (8, 256):
        bare, kit, bar = (per_step(device, width, args.steps, loop)
                          for loop in ("bare", "kit.train", "kit.train with bar"))
        print(f"{width:>12} {bare * 1e6:>10.0f} {kit * 1e6:>10.0f} {bar * 1e6:>10.0f} "
              f"{(bar - bare) * 1e6:>9.0f} {bar / bare:>6.2f}")


if __name__ == "__main__":
    main()
