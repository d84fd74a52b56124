"""Bad input to kit.train: clear errors for a wrong ``loss_for``, a fresh start for a bad checkpoint.

Table 1: ``loss_for`` must return a non-empty dict of scalar floating-point tensors; anything
else is a TypeError/ValueError naming what came back (a non-finite loss stays a
FloatingPointError, see tests/test_train.py). Table 2: a checkpoint that cannot be used (not a
dict, a key missing, corrupted, truncated, an old format, a state that does not load) is
reported as "unreadable ...; starting afresh" and the run starts from scratch, exactly like a
run without a checkpoint: never a crash, never a half-loaded model or optimiser.
"""
from __future__ import annotations

import io

import pytest
import torch

from _train_problem import make_problem
from kit.checkpoint import read_checkpoint, write_checkpoint
from kit.train import train

ITERATIONS = 6


def run(loss_for=None, checkpoint=None, on_step=None, **kwargs):
    model, batch_for, default_loss = make_problem(num_items=32)
    return train(model, batch_for, loss_for or default_loss, ITERATIONS, torch.optim.SGD(model.parameters(), lr=0.1,
                 momentum=0.9), checkpoint=checkpoint, on_step=on_step, progress=False, **kwargs)


def mse(m, batch):
    return torch.nn.functional.mse_loss(m(batch[0]), batch[1])


@pytest.mark.parametrize("call, error, phrase", [
    pytest.param(lambda: run(checkpoint_every=0), ValueError, "checkpoint_every must be an int >= 1",
                 id="checkpoint-every-zero"),
    pytest.param(lambda: run(lambda m, b, s: {}), ValueError, "loss_for returned an empty dict", id="empty-dict"),
    pytest.param(lambda: run(lambda m, b, s: 0.5), TypeError, "loss_for returned a float; it must return a dict",
                 id="a-float"),
    pytest.param(lambda: run(lambda m, b, s: mse(m, b)), TypeError, "loss_for returned a Tensor; it must return a dict",
                 id="a-bare-tensor"),
    pytest.param(lambda: run(lambda m, b, s: {"mse": (m(b[0]) - b[1]) ** 2}), ValueError,
                 r"loss 'mse' has shape \(8, 1\); losses must be scalars", id="non-scalar-loss"),
    pytest.param(lambda: run(lambda m, b, s: {"mse": mse(m, b), "reg": 0.1}), TypeError,
                 "loss 'reg' is a float; losses must be floating-point tensors", id="a-float-term"),
    pytest.param(lambda: run(lambda m, b, s: {"mse": mse(m, b), "count": torch.tensor(3)}), TypeError,
                 "loss 'count' is a torch.int64 tensor", id="an-integer-term"),
    pytest.param(lambda: run(lambda m, b, s: {"mse": mse(m, b)} if s < 2 else {"mse": mse(m, b).view(1, 1).repeat(2, 1)}),
                 ValueError, r"step 2: loss 'mse' has shape \(2, 1\)", id="non-scalar-at-a-later-step"),
    pytest.param(lambda: run(generators={"noise": 0}), TypeError, r"generators must be a dict \{name: torch.Generator\}",
                 id="generators-not-generators"),
])
def test_bad_input_is_a_clear_error(call, error, phrase):
    with pytest.raises(error, match=phrase):
        call()


# --- checkpoints that cannot be used: a warning and a fresh start ---------------------------

def interrupted_checkpoint(path):
    """A genuine checkpoint, written by a run stopped after step 2."""
    def stop(step, row):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(checkpoint=path, on_step=stop)
    return read_checkpoint(path)


def rewrite(change):
    """Write a genuine checkpoint, then replace it by ``change(payload)`` in the v2 format."""
    def build(path):
        write_checkpoint(path, change(interrupted_checkpoint(path)))
    return build


def old_format(state):
    """A file as the previous kit.train wrote it: plain ``torch.save`` bytes."""
    def build(path):
        buffer = io.BytesIO()
        torch.save(state, buffer)
        path.write_bytes(buffer.getvalue())
    return build


def truncate(path):
    interrupted_checkpoint(path)
    path.write_bytes(path.read_bytes()[:-100])


def without(key):
    return rewrite(lambda state: {k: v for k, v in state.items() if k != key})


@pytest.mark.parametrize("build, phrase", [
    pytest.param(old_format([1, 2, 3]), "no kit.train v2 header", id="old-format-not-a-dict"),
    pytest.param(old_format({"run_key": {"iterations": ITERATIONS}, "step": 3}), "no kit.train v2 header",
                 id="old-format-missing-keys"),
    pytest.param(lambda path: path.write_bytes(b"not a checkpoint"), "no kit.train v2 header", id="garbage"),
    pytest.param(truncate, "checksum does not match", id="truncated"),
    pytest.param(rewrite(lambda state: [state]), "holds a list, not a dict", id="not-a-dict"),
    pytest.param(without("model"), r"lacks the keys \['model'\]", id="missing-model"),
    pytest.param(without("rng"), r"lacks the keys \['rng'\]", id="missing-rng"),
    pytest.param(rewrite(lambda state: dict(state, step=99)), "step 99 does not fit", id="step-out-of-range"),
    pytest.param(rewrite(lambda state: dict(state, optimizer={"state": {}, "param_groups": []})), "does not load",
                 id="optimizer-does-not-load"),  # the model loads first: it must be rolled back
    pytest.param(rewrite(lambda state: dict(state, rng=dict(state["rng"], numpy="bad"))), "does not load",
                 id="rng-does-not-load"),
])
def test_unusable_checkpoint_starts_afresh(tmp_path, build, phrase):
    fresh = run()
    path = tmp_path / "run.pt"
    build(path)
    with pytest.warns(UserWarning, match=f"checkpoint .* is unreadable \\(.*{phrase}.*\\); starting afresh"):
        history = run(checkpoint=path, run_key=None)
    assert history["loss"].tolist() == fresh["loss"].tolist()  # from scratch, nothing half-loaded
    assert not path.exists()


def test_a_good_checkpoint_still_resumes(tmp_path):
    fresh = run()
    path = tmp_path / "run.pt"
    interrupted_checkpoint(path)
    steps = []
    history = run(checkpoint=path, on_step=lambda step, row: steps.append(step))
    assert steps == [3, 4, 5] and history["loss"].tolist() == fresh["loss"].tolist()
