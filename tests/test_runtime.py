import pytest
import torch

from kit import runtime


def test_same_seed_same_numbers():
    runtime.seed_everything(7)
    a = torch.randn(5), torch.nn.Linear(3, 3).weight.detach().clone()
    runtime.seed_everything(7)
    b = torch.randn(5), torch.nn.Linear(3, 3).weight.detach().clone()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    runtime.seed_everything(8)
    assert not torch.equal(torch.randn(5), a[0])


def test_seed_must_be_a_non_negative_int():
    with pytest.raises(ValueError, match="non-negative"):
        runtime.seed_everything(-1)


def test_gpu_profile_without_cuda_is_an_error():
    if torch.cuda.is_available():
        assert runtime.device_for("gpu").type == "cuda"
    else:
        with pytest.raises(RuntimeError, match="needs a CUDA device"):
            runtime.device_for("gpu")
    assert runtime.device_for("cpu").type == "cpu"
    assert runtime.device_for("smoke").type == "cpu"


def test_setup_sets_threads_and_determinism(monkeypatch):
    monkeypatch.setenv("KIT_PROFILE", "smoke")
    device = runtime.setup(seed=1, threads=1)
    assert device.type == "cpu"
    assert torch.get_num_threads() == 1
    assert torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    assert 1 <= runtime.available_cores()


def test_count_parameters_counts_weights_and_biases_once_each():
    import torch

    from kit.runtime import count_parameters

    layer = torch.nn.Linear(3, 4)  # 12 weights + 4 biases
    shared = torch.nn.Sequential(layer, layer)  # the same parameters twice: counted once
    assert count_parameters(layer) == 16 and count_parameters(shared) == 16
    layer.bias.requires_grad_(False)
    assert count_parameters(layer, trainable_only=True) == 12 and count_parameters(layer) == 16
