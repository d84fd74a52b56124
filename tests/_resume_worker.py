"""A small BatchNorm + dropout training run for tests/test_train_resume.py.

Run as a script, it trains with a checkpoint and prints ``step N`` after every step so that
the test knows when to send SIGINT or SIGKILL; ``loss_for`` sleeps between the forward pass
(BatchNorm statistics updated, dropout drawn) and the backward pass, so that a signal lands in
the middle of a step. Every kind of generator is used: torch's CPU generator (dropout), one
``torch.Generator`` the caller owns (input noise, passed as ``generators``), NumPy's and
Python's global generators (a per-step loss weight).

    python tests/_resume_worker.py CHECKPOINT OUT ITERATIONS SLEEP CHECKPOINT_EVERY

Exit status 0 and ``done`` when finished (the final state_dict is saved to OUT), 130 and
``interrupted`` after a KeyboardInterrupt.
"""
from __future__ import annotations

import random
import sys
import time

import numpy as np
import torch

from kit.train import epoch_sampler, train, warmup_cosine


def run(checkpoint=None, iterations: int = 200, sleep: float = 0.0, checkpoint_every: int = 50,
        on_step=None, **overrides):
    """Build the model and data from fixed seeds and train; return (model, history)."""
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                torch.nn.Dropout(0.3), torch.nn.Linear(16, 1))
    data = torch.Generator().manual_seed(1)
    x, y = torch.randn(96, 6, generator=data), torch.randn(96, 1, generator=data)
    noise = torch.Generator().manual_seed(2)  # owned by the caller, like Gumbel noise or augmentation
    sampler = epoch_sampler(96, 12, seed=3)

    def batch_for(step):
        index = sampler(step)
        return x[index] + 0.1 * torch.randn(len(index), 6, generator=noise), y[index]

    def loss_for(m, batch, step):
        prediction = m(batch[0])  # (12, 1); BatchNorm running statistics updated, dropout drawn
        time.sleep(sleep)  # a signal sent now lands mid-step
        weight = 1.0 + 0.1 * float(np.random.rand()) + 0.1 * random.random()
        return {"mse": weight * torch.nn.functional.mse_loss(prediction, batch[1])}

    settings = dict(lr_at=warmup_cosine(0.05, iterations, warmup=10), grad_clip=5.0, run_key={"test": "resume"},
                    generators={"noise": noise})
    settings.update(overrides)
    make_optimizer = settings.pop("make_optimizer", None) or (
        lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4))
    optimizer = make_optimizer(model)
    history = train(model, batch_for, loss_for, iterations, optimizer, checkpoint=checkpoint,
                    checkpoint_every=checkpoint_every, on_step=on_step, progress=False, **settings)
    return model, history


def main(checkpoint: str, out: str, iterations: str, sleep: str, checkpoint_every: str) -> int:
    torch.set_num_threads(1)
    try:
        model, _ = run(checkpoint, int(iterations), float(sleep), int(checkpoint_every),
                       on_step=lambda step, row: print(f"step {step}", flush=True))
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        return 130
    torch.save(model.state_dict(), out)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
