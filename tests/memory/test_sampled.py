"""Sampled memory tracking: the peak of a few tracked steps is the peak of tracking every step, for every family."""

from __future__ import annotations

import pytest
import torch

from autoside.errors import ConfigError
from autoside.memory.meter import MemoryMeter, TrackingPolicy, resolve_tracking
from autoside.recipe import Recipe
from autoside.sidenets import create_sidenet, list_families
from autoside.testing import random_task, tiny_backbone
from autoside.train import train_model


def _build(family: str):
    for layout in ("vit", "swin", "cnn"):
        try:
            torch.manual_seed(0)
            return create_sidenet(family, tiny_backbone(layout), num_classes=3)
        except ConfigError:
            continue
    raise AssertionError(f"{family} builds on no tiny backbone")


@pytest.mark.parametrize("family", list_families())
def test_sampled_peak_equals_fully_tracked_peak(family: str) -> None:
    # 14 images in batches of 4: three full steps and a partial one per epoch, three epochs, so tracking resumes after
    # untracked steps and the partial batch is a new shape.
    recipe = Recipe(epochs=3, batch_size=4, eval_batch_size=10, warmup_epochs=0.5, amp=False)
    reports = {}
    for tracking in ("all", "sampled"):
        model = _build(family)
        task = random_task(model.backbone.spec.image_size, n=14)
        meter = MemoryMeter("cpu", tracking=tracking)
        result = train_model(model, task, recipe, device=torch.device("cpu"), meter=meter)
        reports[tracking] = (meter.report(), result)
    full, sampled = reports["all"][0], reports["sampled"][0]
    assert full.tracked_steps == full.steps == 12
    assert sampled.tracked_steps == 7 and sampled.steps == 12, "first 2 steps of each epoch + the first partial batch"
    assert sampled.peak_memory_bytes == full.peak_memory_bytes
    assert sampled.saved_activation_bytes == full.saved_activation_bytes
    # Tracking never changes training itself.
    assert [h["train_loss"] for h in reports["sampled"][1].history] == [
        h["train_loss"] for h in reports["all"][1].history
    ]


def test_policy_tracks_the_first_steps_of_each_epoch_and_new_shapes() -> None:
    policy = TrackingPolicy("sampled", warmup_steps=2)
    shapes = [(4,), (4,), (4,), (4,), (2,)]
    picked = [[policy.wants(shape, epoch) for shape in shapes] for epoch in range(3)]
    later = [True, True, False, False, False]
    assert picked == [[True, True, False, False, True], later, later]
    assert (policy.tracked, policy.steps) == (7, 15)


def test_tracking_modes_resolve_per_device() -> None:
    assert resolve_tracking("auto", "cpu") == "sampled"
    assert resolve_tracking("auto", "cuda") == "off"
    assert resolve_tracking("all", "cuda") == "all"
    with pytest.raises(ConfigError, match="memory_tracking: 'off' is not one of auto, sampled, all"):
        Recipe(memory_tracking="off")  # a recipe cannot turn the CPU meter off
    with pytest.raises(ConfigError, match="memory_tracking: 'often'"):
        Recipe(memory_tracking="often")


def test_sampled_meter_enforces_the_budget() -> None:
    from autoside.memory.meter import MemoryBudgetExceeded

    model = _build("linear")
    recipe = Recipe(epochs=1, batch_size=4, warmup_epochs=0.5, amp=False, memory_budget=1000)
    with pytest.raises(MemoryBudgetExceeded):
        train_model(model, random_task(model.backbone.spec.image_size), recipe, device=torch.device("cpu"))
