"""The tiny regression problem the training-loop tests share (tests/test_train.py,
tests/test_bad_input_train.py): a two-layer MLP on fixed random data, shuffled epochs."""
from __future__ import annotations

import torch

from kit.train import epoch_sampler


def make_problem(seed: int = 0, num_items: int = 64, batch_size: int = 8):
    """(model, batch_for, loss_for): the model's weights from ``seed``, the data and batches fixed."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(num_items, 4, generator=g), torch.randn(num_items, 1, generator=g)
    sampler = epoch_sampler(num_items, batch_size, seed=0)
    batch_for = lambda step: (x[sampler(step)], y[sampler(step)])
    loss_for = lambda m, batch, step: {"mse": torch.nn.functional.mse_loss(m(batch[0]), batch[1])}
    return model, batch_for, loss_for
