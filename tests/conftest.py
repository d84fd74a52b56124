"""Shared fixtures: a small shape dataset and a non-interactive matplotlib backend."""
import matplotlib

matplotlib.use("Agg")

import pytest
import torch

from kit.data.shapes import ShapeSceneConfig, generate


@pytest.fixture(scope="session")
def scenes():
    return generate(ShapeSceneConfig(num_images=24, image_size=64, seed=3), use_cache=False)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    yield
