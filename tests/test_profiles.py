import pytest
import torch

import kit
from kit import profiles


def test_profile_reads_environment(monkeypatch):
    for name in ("smoke", "cpu", "gpu"):
        monkeypatch.setenv("KIT_PROFILE", name)
        assert kit.profile() == name
    monkeypatch.setenv("KIT_PROFILE", " CPU ")
    assert kit.profile() == "cpu"


def test_auto_resolves_by_cuda(monkeypatch):
    monkeypatch.setenv("KIT_PROFILE", "auto")
    assert kit.profile() == ("gpu" if torch.cuda.is_available() else "cpu")
    monkeypatch.delenv("KIT_PROFILE")
    assert kit.profile() == ("gpu" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(profiles, "_cuda_available", lambda: True)
    assert profiles.resolve("auto") == "gpu"


def test_unknown_profile_names_the_valid_ones(monkeypatch):
    monkeypatch.setenv("KIT_PROFILE", "laptop")
    with pytest.raises(ValueError) as error:
        kit.profile()
    for valid in ("smoke", "cpu", "gpu", "auto"):
        assert valid in str(error.value)


SIZES = {"smoke": {"n": 1, "seeds": [0]}, "cpu": {"n": 2, "seeds": [0]}, "gpu": {"n": 3, "seeds": [0, 1, 2]}}


def test_select_picks_the_active_row(monkeypatch):
    monkeypatch.setenv("KIT_PROFILE", "cpu")
    cfg = kit.select(SIZES)
    assert cfg.profile == "cpu" and cfg.n == 2
    assert kit.select(SIZES, "gpu").seeds == [0, 1, 2]


def test_select_rejects_incomplete_tables():
    with pytest.raises(ValueError, match="missing"):
        kit.select({"smoke": {"n": 1}, "cpu": {"n": 2}}, "cpu")
    with pytest.raises(ValueError, match="same sizes"):
        kit.select({"smoke": {"n": 1}, "cpu": {"n": 2}, "gpu": {"m": 3}}, "cpu")
