"""Predict a trial's peak training memory before it trains, from dry steps (measured, then extrapolated).

Method (a *dry step*, not an analytic model): on a copy of the side network, run two optimizer steps exactly as
:func:`autoside.train.train_model` does (forward under autocast, ``zero_grad``, backward, AdamW step; so the second
step's forward runs with the first step's gradients and the optimizer state alive, which is where training peaks)
at two small batch sizes ``b1 < b2``, each under a fresh :class:`~autoside.memory.MemoryMeter`. Peak memory is
affine in the batch size (parameters, gradients and optimizer state are constant; activations scale with it), so
the prediction for the recipe's batch ``B`` is ``peak(b1) + (B - b1) * (peak(b2) - peak(b1)) / (b2 - b1)``, with no
safety factor: the GPU packer adds its own stated margin (:mod:`autoside.tune.resources`). It is measured with the
same meter as training, so on CPU it predicts the live-tensor peak and on CUDA the allocator peak.
``tests/memory/test_predict.py`` checks its error for every registered family.

Cost: four small steps, typically well under a second for the side networks autoside searches; a trial over the
budget is refused in seconds instead of failing minutes later.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

from autoside.data import Preprocess, Task
from autoside.memory.meter import MemoryMeter, resolve_tracking
from autoside.objective import objective_for
from autoside.recipe import Recipe
from autoside.sidenets import SideNet
from autoside.train import training_step


@dataclass(frozen=True)
class MemoryPrediction:
    predicted_bytes: int
    method: str
    batch_sizes: tuple[int, int]
    measured_bytes: tuple[int, int]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dry_batches(batch_size: int) -> tuple[int, int]:
    """Two small batch sizes (>= 2, so BatchNorm in train mode works) to extrapolate from."""
    b2 = max(4, min(batch_size, 8))
    return max(2, b2 // 2), b2


def _peak_of_steps(
    model: torch.nn.Module,
    task: Task,
    recipe: Recipe,
    batch: int,
    device: torch.device,
    preprocess: torch.nn.Module | None,
) -> int:
    preprocess = preprocess or Preprocess.from_data_config(model.backbone.spec.data_config).to(device)
    amp = recipe.amp and device.type == "cuda"
    objective = objective_for(recipe)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=recipe.lr)
    order = torch.arange(batch) % len(task.train)  # a dataset smaller than the batch: repeat it
    images, labels = next(iter(task.train.batches(batch, order)))
    # Every dry step is tracked (on CUDA only if asked: the allocator peak is the meter there).
    tracking = "off" if resolve_tracking(recipe.memory_tracking, device) == "off" else "all"
    meter = MemoryMeter(device, tracking=tracking)
    model.train()
    model.begin_epoch(recipe.epochs - 1)  # the steady phase, after any warm-up (CST's distil-only epochs cost less)
    with meter:
        meter.register_model(model)
        meter.register(*tree_flatten([images, labels])[0])  # the batch as read, alive through the step as in training
        for _ in range(2):
            x, y = preprocess(images), objective.targets_to(labels, device)
            meter.step()
            training_step(model, x, y, optimizer, amp=amp, objective=objective)
            del x, y
    return meter.report().peak_memory_bytes


def predict_peak_memory(
    model: SideNet | torch.nn.Module,
    task: Task,
    recipe: Recipe,
    *,
    device: torch.device | str = "cpu",
    preprocess: torch.nn.Module | None = None,
) -> MemoryPrediction:
    """Predict the peak training memory of ``model`` under ``recipe`` (see the module docstring); ``preprocess`` as
    in :func:`autoside.train.train_model` (a cached run predicts on stored features)."""
    import time

    tic = time.perf_counter()
    device = torch.device(device)
    probe = copy.deepcopy(model).to(device)
    rng = torch.get_rng_state()
    b1, b2 = dry_batches(recipe.batch_size)
    try:
        p1 = _peak_of_steps(probe, task, recipe, b1, device, preprocess)
        p2 = _peak_of_steps(probe, task, recipe, b2, device, preprocess)
    finally:
        torch.set_rng_state(rng)  # dropout in the dry steps must not change the trial's random stream
        del probe
        if device.type == "cuda":
            torch.cuda.empty_cache()
    slope = max(0.0, (p2 - p1) / (b2 - b1))
    predicted = int(p1 + (recipe.batch_size - b1) * slope)
    return MemoryPrediction(predicted, "dry_step_linear_in_batch", (b1, b2), (p1, p2), time.perf_counter() - tic)
