"""Shared fixtures: one torch thread (CI has two cores), no hub access, tiny recipes, a local Ray cluster."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The feature cache of the test session (and of the Ray workers it starts) lives in a fresh folder, not in ~/.cache.
os.environ.setdefault("AUTOSIDE_CACHE_DIR", tempfile.mkdtemp(prefix="autoside-test-cache-"))
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests that change the thread count (a recipe's ``threads``) do not leak it into the next test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_recipe_dict() -> dict:
    """A recipe that trains in seconds: sklearn digits, EfficientNet-Lite0 (offline ImageNet weights) at 32 px."""
    return {
        "name": "tiny",
        "dataset": {"name": "digits", "train_size": 64, "val_size": 32, "test_size": 64, "seed": 0},
        "backbone": {"name": "tf_efficientnet_lite0", "weights": "pretrained"},
        "sidenet": {"name": "linear"},
        "image_size": 32,
        "epochs": 2,
        "batch_size": 16,
        "lr": 0.01,
        "warmup_epochs": 0.5,
        "threads": 1,
    }


@pytest.fixture(scope="module")
def ray_cluster():  # noqa: ANN201
    """A small local Ray cluster bound to 127.0.0.1, shared by the in-process searches of a test module."""
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        object_store_memory=128 * 2**20,
        log_to_driver=False,
    )
    yield
    ray.shutdown()
