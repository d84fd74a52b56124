"""Stop and resume is the same run: real signals into a subprocess, weights compared bit for bit.

A subprocess (tests/_resume_worker.py) trains a BatchNorm + dropout model on the CPU and is
sent a real SIGINT (what JupyterLab's Stop sends) in the middle of a step, or SIGKILL; the run
is then resumed from its checkpoint (in this process, which starts the same run afresh: same
seeds, one thread) and the final state_dict (BatchNorm running statistics and
``num_batches_tracked`` included) must equal an uninterrupted run's exactly. The other tests check that a changed
schedule or optimiser starts afresh and that a corrupted checkpoint is caught by its checksum.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _resume_worker import run

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_resume_worker.py")
ITERATIONS = 200


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The workers train on one thread; so do the runs in this process (bit-identical numbers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference():
    """The uninterrupted run's final state_dict."""
    model, history = run(None, ITERATIONS)
    assert len(history) == ITERATIONS
    return model.state_dict()


def start_worker(checkpoint: Path, out: Path, sleep: float, checkpoint_every: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(WORKER), str(checkpoint), str(out), str(ITERATIONS), str(sleep),
                             str(checkpoint_every)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)


def signal_after(process: subprocess.Popen, step: int, signum: int) -> list[str]:
    """Wait for the line ``step <step>``, send ``signum``, return all output lines."""
    lines = []
    try:
        for line in process.stdout:
            lines.append(line.strip())
            if line.strip() == f"step {step}":
                process.send_signal(signum)
                break
        rest, errors = process.communicate(timeout=30)
    except BaseException:
        process.kill()
        raise
    assert f"step {step}" in lines, f"the worker never reached step {step}: {errors[-2000:]}"
    return lines + rest.splitlines()


def finish(checkpoint: Path) -> tuple[int, dict]:
    """Resume from ``checkpoint`` to the end (in this process: a fresh start of the same run).

    Returns the first step run and the final state_dict.
    """
    seen = []
    model, history = run(checkpoint, ITERATIONS, on_step=lambda step, row: seen.append(step))
    assert history["step"].tolist() == list(range(ITERATIONS)) and not checkpoint.exists()
    return seen[0], model.state_dict()


def assert_same_weights(resumed: dict, reference: dict) -> None:
    assert resumed.keys() == reference.keys()
    for name, tensor in reference.items():  # weights, BatchNorm running statistics, num_batches_tracked
        assert torch.equal(resumed[name], tensor), f"{name} differs after the resume"


def test_sigint_mid_step_finishes_the_step_and_resumes_bit_for_bit(tmp_path, reference):
    checkpoint = tmp_path / "run.pt"
    process = start_worker(checkpoint, tmp_path / "final.pt", sleep=0.004, checkpoint_every=1000)  # no periodic one
    lines = signal_after(process, 30, signal.SIGINT)
    assert process.returncode == 130 and "interrupted" in lines and checkpoint.exists()
    last = int([line for line in lines if line.startswith("step")][-1].split()[1])
    first, resumed = finish(checkpoint)
    assert first == last + 1  # the step in progress was finished and saved, none replayed
    assert_same_weights(resumed, reference)


def test_sigkill_resumes_from_the_last_periodic_checkpoint_bit_for_bit(tmp_path, reference):
    checkpoint = tmp_path / "run.pt"
    process = start_worker(checkpoint, tmp_path / "final.pt", sleep=0.002, checkpoint_every=20)
    lines = signal_after(process, 50, signal.SIGKILL)  # the checkpoint of step 40 is on disk
    assert process.returncode == -signal.SIGKILL and "interrupted" not in lines
    first, resumed = finish(checkpoint)
    assert first in (40, 60)  # 60 if the kill came after the next checkpoint
    assert_same_weights(resumed, reference)


def interrupt(tmp_path, stop_step=7, **overrides) -> Path:
    """The checkpoint of an in-process run stopped by a real SIGINT sent to itself after ``stop_step``."""
    checkpoint = tmp_path / "run.pt"

    def on_step(step, row):
        if step == stop_step:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt, match=f"stopped after step {stop_step}"):
        run(checkpoint, 30, on_step=on_step, **overrides)
    assert checkpoint.exists()
    return checkpoint


def steps_seen(checkpoint: Path, **overrides) -> list[int]:
    seen = []
    run(checkpoint, 30, on_step=lambda step, row: seen.append(step), **overrides)
    return seen


def test_sigint_handler_is_restored_and_the_run_resumes(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    checkpoint = interrupt(tmp_path)
    assert signal.getsignal(signal.SIGINT) is before
    assert steps_seen(checkpoint)[0] == 8


@pytest.mark.parametrize("change, differs", [
    ({"lr_at": lambda step: 0.05}, "schedule"),
    ({"grad_clip": 1.0}, "grad_clip"),
    ({"run_key": {"test": "other"}}, "caller"),
], ids=["schedule", "grad_clip", "run_key"])
def test_changed_configuration_starts_afresh(tmp_path, change, differs):
    checkpoint = interrupt(tmp_path)
    with pytest.warns(UserWarning, match=f"different run \\(differs in: {differs}\\); starting afresh"):
        assert steps_seen(checkpoint, **change)[0] == 0


def test_changed_optimiser_hyper_parameter_starts_afresh(tmp_path):
    checkpoint = interrupt(tmp_path)
    other = lambda model: torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.8, weight_decay=1e-4)
    with pytest.warns(UserWarning, match="different run \\(differs in: optimizer\\); starting afresh"):
        assert steps_seen(checkpoint, make_optimizer=other)[0] == 0


def test_corrupted_checkpoint_is_caught_by_the_checksum(tmp_path):
    checkpoint = interrupt(tmp_path)
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the payload
    checkpoint.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="unreadable \\(its SHA-256 checksum does not match"):
        assert steps_seen(checkpoint)[0] == 0
