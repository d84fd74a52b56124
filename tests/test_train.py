import contextlib

import pytest
import torch

from kit.train import amp_settings, epoch_sampler, train, warmup_cosine


def make_problem(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g)
    sampler = epoch_sampler(64, 8, seed=0)
    batch_for = lambda step: (x[sampler(step)], y[sampler(step)])
    loss_for = lambda m, batch, step: {"mse": torch.nn.functional.mse_loss(m(batch[0]), batch[1])}
    return model, batch_for, loss_for


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
    with pytest.warns(UserWarning, match="different run"):
        history = train(model, batch_for, loss_for, 10, opt, checkpoint=checkpoint, run_key={"a": 2}, progress=False)
    assert len(history) == 10


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
def test_gpu_training_with_amp():
    model, batch_for, loss_for = make_problem()
    model = model.cuda()
    history = train(model, lambda s: tuple(t.cuda() for t in batch_for(s)), loss_for, 5,
                    torch.optim.SGD(model.parameters(), lr=0.1), progress=False)
    assert len(history) == 5


def test_epoch_sampler_covers_every_item_once_per_epoch():
    sampler = epoch_sampler(20, 5, seed=3)
    epoch = torch.cat([sampler(s) for s in range(4)])
    assert sorted(epoch.tolist()) == list(range(20))
    assert torch.equal(sampler(2), epoch_sampler(20, 5, seed=3)(2))
    with pytest.raises(ValueError, match="batch_size"):
        epoch_sampler(4, 5, 0)
