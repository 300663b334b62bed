"""A small local Ray cluster bound to 127.0.0.1, shared by the in-process searches of a test module."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ray_cluster():  # noqa: ANN201
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
