"""The CPU memory tracker against figures computed by hand."""

import pytest
import torch
from torch import nn

from autoside.memory.meter import LiveTensorTracker, MemoryBudgetExceeded, MemoryMeter

F32 = 4


def test_live_bytes_follow_creation_and_free():
    tracker = LiveTensorTracker("cpu")
    with tracker:
        a = torch.ones(1000)
        b = a * 2
        assert tracker.live_bytes == 2 * 1000 * F32
        view = b[10:]  # a view shares b's storage: counted once
        del b
        assert tracker.live_bytes == 2 * 1000 * F32
        del view
        assert tracker.live_bytes == 1000 * F32
        del a
    assert tracker.live_bytes == 0
    assert tracker.peak_bytes == 2 * 1000 * F32


def test_saved_activations_of_a_two_layer_mlp_match_hand_count():
    # Linear saves its input, ReLU its output, the second Linear its input (= ReLU's output, the same storage),
    # sum saves nothing. Weights are parameters, never counted as activations.
    batch, width = 8, 16
    model = nn.Sequential(nn.Linear(width, width, bias=False), nn.ReLU(), nn.Linear(width, width, bias=False))
    x = torch.randn(batch, width)
    meter = MemoryMeter("cpu")
    with meter:
        meter.register_model(model)
        meter.register(x)
        meter.step()
        model(x).sum().backward()
    report = meter.report()
    assert report.saved_activation_bytes == 2 * batch * width * F32
    params = 2 * width * width * F32
    # Peak includes parameters, input, saved activations and the gradients of both weights.
    assert report.peak_memory_bytes >= params + 2 * batch * width * F32 + params
    assert report.source == "live_tensor_tracker"


def test_frozen_layers_save_nothing_without_grad():
    batch, width = 4, 32
    frozen = nn.Linear(width, width).requires_grad_(False)
    head = nn.Linear(width, 2)
    x = torch.randn(batch, width)
    meter = MemoryMeter("cpu")
    with meter:
        meter.register_model(frozen)
        meter.register_model(head)
        meter.step()
        with torch.no_grad():
            features = frozen(x)
        head(features).sum().backward()
    # Only the head's input (the frozen features) is saved.
    assert meter.report().saved_activation_bytes == batch * width * F32


def test_budget_stops_the_op_that_crosses_it():
    meter = MemoryMeter("cpu", budget_bytes=10_000)
    with pytest.raises(MemoryBudgetExceeded, match="over the memory budget"):
        with meter:
            keep = [torch.zeros(1000) for _ in range(5)]
            del keep
    assert meter.tracker.peak_bytes > 10_000


def test_peak_is_reset_per_meter():
    first = MemoryMeter("cpu")
    with first:
        big = torch.zeros(100_000)
        del big
    second = MemoryMeter("cpu")
    with second:
        small = torch.zeros(10)
        del small
    assert first.report().peak_memory_bytes == 100_000 * F32
    assert second.report().peak_memory_bytes == 10 * F32
