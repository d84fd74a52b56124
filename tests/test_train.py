"""The training loop (kit.train): history, schedules, resume, forks, AMP, the epoch sampler."""
import contextlib
import copy

import pandas as pd
import pytest
import torch

from _train_problem import make_problem
from kit.train import amp_settings, epoch_sampler, train, warmup_cosine


def interrupt_at(stop_step):
    def on_step(step, row):
        if step == stop_step:
            raise KeyboardInterrupt  # what the Stop button sends

    return on_step


def test_history_and_learning_rate():
    model, batch_for, loss_for = make_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    history = train(model, batch_for, loss_for, 12, opt, lr_at=warmup_cosine(0.1, 12, warmup=4), progress=False)
    assert list(history.columns[:3]) == ["step", "loss", "mse"] and len(history) == 12
    assert history["lr"].iloc[0] == pytest.approx(0.01) and history["lr"].iloc[4] == pytest.approx(0.1)


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    model, batch_for, loss_for = make_problem()
    straight = train(model, batch_for, loss_for, 20, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                     progress=False)
    reference = [p.detach().clone() for p in model.parameters()]

    model, batch_for, loss_for = make_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    checkpoint = tmp_path / "run.pt"

    with pytest.raises(KeyboardInterrupt):
        train(model, batch_for, loss_for, 20, opt, checkpoint=checkpoint, checkpoint_every=5, on_step=interrupt_at(12),
              progress=False, run_key={"name": "t"})
    assert checkpoint.exists()
    model, batch_for, loss_for = make_problem(seed=123)  # a fresh process: different init, same run
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    resumed = train(model, batch_for, loss_for, 20, opt, checkpoint=checkpoint, progress=False, run_key={"name": "t"})
    assert len(resumed) == 20 and resumed["step"].tolist() == list(range(20))
    for p, q in zip(model.parameters(), reference):
        assert torch.equal(p, q)
    assert resumed["loss"].tolist() == pytest.approx(straight["loss"].tolist())
    assert not checkpoint.exists()  # finished runs leave nothing to resume


def test_checkpoint_of_another_run_is_ignored(tmp_path):
    model, batch_for, loss_for = make_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    checkpoint = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        train(model, batch_for, loss_for, 10, opt, checkpoint=checkpoint, run_key={"a": 1}, progress=False,
              on_step=interrupt_at(3))
    steps = []
    with pytest.warns(UserWarning, match="different run"):
        train(model, batch_for, loss_for, 10, opt, checkpoint=checkpoint, run_key={"a": 2}, progress=False,
              on_step=lambda step, row: steps.append(step))
    assert steps == list(range(10))  # from step 0, not from the other run's step 4


def test_what_on_step_writes_into_the_row_survives_a_resume(tmp_path):
    """The contract: ``row`` is saved with the history; a list the callback keeps is not."""
    checkpoint, kept = tmp_path / "run.pt", []

    def on_step(step, row):
        row["double_step"] = 2 * step
        kept.append(step)
        if step == 4 and len(kept) == 5:
            raise KeyboardInterrupt  # a Stop after step 4, in the first process

    model, batch_for, loss_for = make_problem()
    with pytest.raises(KeyboardInterrupt):
        train(model, batch_for, loss_for, 10, torch.optim.SGD(model.parameters(), lr=0.05), checkpoint=checkpoint,
              on_step=on_step, progress=False)
    kept.clear()  # a fresh process: what the closure collected is gone
    model, batch_for, loss_for = make_problem()
    history = train(model, batch_for, loss_for, 10, torch.optim.SGD(model.parameters(), lr=0.05),
                    checkpoint=checkpoint, on_step=on_step, progress=False)
    assert history["double_step"].tolist() == [2 * s for s in range(10)]  # steps 0-4 came back from the checkpoint
    assert kept == [5, 6, 7, 8, 9]


def test_a_fork_from_a_trunk_is_the_straight_run():
    """The documented fork: a second ``train`` with every step function shifted by the fork step."""
    iterations, first = 20, 8
    lr = warmup_cosine(0.05, iterations, warmup=4)
    make_optimizer = lambda model: torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model, batch_for, loss_for = make_problem()
    straight = train(model, batch_for, loss_for, iterations, make_optimizer(model), lr_at=lr, progress=False)
    reference = copy.deepcopy(model.state_dict())

    model, batch_for, loss_for = make_problem()
    optimizer = make_optimizer(model)
    trunk = train(model, batch_for, loss_for, first, optimizer, lr_at=lr, progress=False)
    branch_model = make_problem(seed=5)[0]  # other initial weights: the trunk's must replace them
    branch_model.load_state_dict(copy.deepcopy(model.state_dict()))
    branch_optimizer = make_optimizer(branch_model)
    branch_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # momentum buffers included
    branch = train(branch_model, lambda k: batch_for(first + k), lambda m, b, k: loss_for(m, b, first + k),
                   iterations - first, branch_optimizer, lr_at=lambda k: lr(first + k), progress=False)
    branch["step"] += first
    history = pd.concat([trunk, branch], ignore_index=True)
    assert history["step"].tolist() == list(range(iterations))
    assert history["lr"].tolist() == straight["lr"].tolist() and history["loss"].tolist() == straight["loss"].tolist()
    for name, tensor in branch_model.state_dict().items():
        assert torch.equal(tensor, reference[name]), name


def test_non_finite_loss_is_an_error():
    model, batch_for, _ = make_problem()
    with pytest.raises(FloatingPointError, match="step 0"):
        train(model, batch_for, lambda m, b, s: {"bad": m(b[0]).sum() * float("nan")}, 3,
              torch.optim.SGD(model.parameters(), lr=0.1), progress=False)


def test_amp_is_off_on_the_cpu_and_refused_there():
    autocast, scaler = amp_settings(torch.device("cpu"))
    assert autocast is contextlib.nullcontext and scaler is None
    with pytest.raises(ValueError, match="CUDA"):
        amp_settings(torch.device("cpu"), enabled=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_amp_on_cuda_runs_the_forward_pass_in_half_precision_and_keeps_float32_weights():
    model, batch_for, _ = make_problem()
    model = model.cuda()
    before = [p.detach().clone() for p in model.parameters()]
    seen = []

    def loss_for(m, batch, step):
        prediction = m(batch[0])
        seen.append((torch.is_autocast_enabled("cuda"), prediction.dtype))
        return {"mse": torch.nn.functional.mse_loss(prediction.float(), batch[1])}

    history = train(model, lambda s: tuple(t.cuda() for t in batch_for(s)), loss_for, 5,
                    torch.optim.SGD(model.parameters(), lr=0.1), progress=False)
    half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert seen == [(True, half)] * 5  # autocast on in every step, in the dtype amp_settings picks
    assert not torch.is_autocast_enabled("cuda")  # and off again after the loop
    assert all(p.dtype == torch.float32 and not torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert history["loss"].map(lambda v: v == v and abs(v) < float("inf")).all()


def test_epoch_sampler_covers_every_item_once_per_epoch():
    sampler = epoch_sampler(20, 5, seed=3)
    epoch = torch.cat([sampler(s) for s in range(4)])
    assert sorted(epoch.tolist()) == list(range(20))
    assert torch.equal(sampler(2), epoch_sampler(20, 5, seed=3)(2))
    with pytest.raises(ValueError, match="batch_size"):
        epoch_sampler(4, 5, 0)
