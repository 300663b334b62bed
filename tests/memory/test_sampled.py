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


def _sampled_vs_full(build) -> None:  # noqa: ANN001 - a model factory
    # 14 images in batches of 4: three full steps and a partial one per epoch, three epochs, so tracking resumes after
    # untracked steps and the partial batch is a new shape.
    recipe = Recipe(epochs=3, batch_size=4, eval_batch_size=10, warmup_epochs=0.5, amp=False)
    reports = {}
    for tracking in ("all", "sampled"):
        model = build()
        task = random_task(model.backbone.spec.image_size, n=14)
        meter = MemoryMeter("cpu", tracking=tracking)
        result = train_model(model, task, recipe, device=torch.device("cpu"), meter=meter)
        reports[tracking] = (meter.report(), result)
    full, sampled = reports["all"][0], reports["sampled"][0]
    assert full.tracked_steps == full.steps == 12
    # The first 2 steps of the first epoch + the first partial batch, and 2 more at each later epoch that starts a new
    # training phase (CST's distillation warm-up ending, when it has one).
    phases = []
    for epoch in range(recipe.epochs):
        model.begin_epoch(epoch)
        phases.append(model.training_phase())
    expected = 3 + 2 * (len(set(phases)) - 1)
    assert sampled.tracked_steps == expected and sampled.steps == 12
    assert sampled.peak_memory_bytes == full.peak_memory_bytes
    assert sampled.saved_activation_bytes == full.saved_activation_bytes
    # Tracking never changes training itself.
    assert [h["train_loss"] for h in reports["sampled"][1].history] == [
        h["train_loss"] for h in reports["all"][1].history
    ]


@pytest.mark.parametrize("family", list_families())
def test_sampled_peak_equals_fully_tracked_peak(family: str) -> None:
    _sampled_vs_full(lambda: _build(family))


@pytest.mark.parametrize("family", ["cst", "dtl", "side4video"])
def test_sampled_peak_equals_fully_tracked_peak_with_checkpointing(family: str) -> None:
    def build():  # noqa: ANN202
        model = _build(family)
        model.set_grad_checkpointing()
        return model

    _sampled_vs_full(build)


def test_a_new_phase_is_measured_again() -> None:
    """CST's distil-only first epoch costs less than the epochs after it: the peak is the later phase's."""

    def build():  # noqa: ANN202
        torch.manual_seed(0)
        return create_sidenet("cst", tiny_backbone("cnn"), num_classes=3, distill_epochs=1, lambda_feat=1.0)

    _sampled_vs_full(build)


def test_policy_tracks_the_first_steps_of_each_new_phase_and_new_shapes() -> None:
    policy = TrackingPolicy("sampled", warmup_steps=2)
    shapes = [(4,), (4,), (4,), (4,), (2,)]
    phases = ["distill", "train", "train", "distill"]
    picked = [[policy.wants(shape, epoch, phases[epoch]) for shape in shapes] for epoch in range(4)]
    untracked = [False] * 5
    assert picked == [[True, True, False, False, True], [True, True, False, False, False], untracked, untracked]
    assert (policy.tracked, policy.steps) == (5, 20)


def test_cst_distillation_warm_up_is_its_own_phase() -> None:
    model = create_sidenet("cst", tiny_backbone("cnn"), num_classes=3, distill_epochs=2, lambda_feat=1.0)
    seen = []
    for epoch in range(4):
        model.begin_epoch(epoch)
        seen.append(model.training_phase())
    assert seen == ["distill", "distill", "train", "train"]


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
