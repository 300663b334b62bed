import math

import pytest
import torch

from autoside.memory.meter import MemoryBudgetExceeded
from autoside.recipe import recipe_from_dict
from autoside.train import lr_at, param_groups, run_trial


def test_schedule_warms_up_then_decays_to_min():
    lrs = [lr_at(s, total=100, warmup=10, base_lr=1.0, min_ratio=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lr_at(100, total=100, warmup=10, base_lr=1.0, min_ratio=0.1) == pytest.approx(0.1)


def test_weight_decay_only_on_matrices():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups(model, 0.05)
    assert [p.ndim for p in decay["params"]] == [2] and decay["weight_decay"] == 0.05
    assert all(p.ndim == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0


def test_linear_baseline_end_to_end(tiny_recipe_dict):
    # Without the feature cache, so the backbone runs in the trial (tests/cache covers the cached accounting).
    recipe = recipe_from_dict({**tiny_recipe_dict, "feature_cache": False})
    result, model = run_trial(recipe)
    state_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    assert 0.0 <= result.test_accuracy <= 1.0 and result.val_accuracy > 0.2  # 10 classes: chance is 0.1
    assert result.trainable_params == 1280 * 10 + 10
    assert result.memory_source == "live_tensor_tracker" and result.device.startswith("cpu")
    # The backbone's parameters and buffers (EfficientNet BatchNorm statistics) count. For backward the probe saves
    # one batch of pooled features, and the loss its log-softmax, the labels and a scalar: nothing of the backbone.
    backbone_bytes = sum(t.numel() * t.element_size() for t in model.backbone.state_dict().values())
    assert result.peak_memory_bytes > backbone_bytes
    features, loss_saved = recipe.batch_size * 1280 * 4, recipe.batch_size * (10 * 4 + 8)
    assert features <= result.saved_activation_bytes <= features + loss_saved + 8
    assert result.train_images_per_s > 0 and result.wall_time_s > 0 and len(result.history) == recipe.epochs
    # Training never touched the frozen backbone (weights and BatchNorm running statistics).
    assert all(torch.equal(state_before[k], v) for k, v in model.backbone.state_dict().items())


def test_trial_is_deterministic_for_a_seed(tiny_recipe_dict):
    recipe = recipe_from_dict({**tiny_recipe_dict, "epochs": 1})
    first, m1 = run_trial(recipe)
    second, m2 = run_trial(recipe)
    assert first.test_accuracy == second.test_accuracy
    assert first.history[0]["train_loss"] == second.history[0]["train_loss"]
    assert torch.equal(m1.head.weight, m2.head.weight)


def test_full_finetuning_trains_the_backbone_and_costs_more(tiny_recipe_dict):
    linear, _ = run_trial(recipe_from_dict({**tiny_recipe_dict, "epochs": 1}))
    full, model = run_trial(recipe_from_dict({**tiny_recipe_dict, "epochs": 1, "sidenet": {"name": "full"}}))
    assert full.trainable_params == sum(p.numel() for p in model.parameters())
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)
    assert full.peak_memory_bytes > 2 * linear.peak_memory_bytes
    assert math.isfinite(full.history[-1]["train_loss"])


def test_budget_too_small_stops_the_trial(tiny_recipe_dict):
    # 100 KiB: below even a cached linear probe (its head, a batch of stored features and their gradients).
    recipe = recipe_from_dict({**tiny_recipe_dict, "epochs": 1, "memory_budget": "100KiB"})
    with pytest.raises(MemoryBudgetExceeded, match="over the memory budget of 100 KiB"):
        run_trial(recipe)


def test_device_names_checked_before_any_work() -> None:
    from autoside.errors import ConfigError
    from autoside.train import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="device: 'bogus' is not one of"):
        resolve_device("bogus")
    with pytest.raises(ConfigError, match="device: 'mps' is not one of"):
        resolve_device("mps")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ConfigError, match="no usable CUDA device" if count == 0 else "CUDA device"):
        resolve_device(f"cuda:{count}")


def test_recipe_grad_checkpointing_trains_the_same_network_in_less_memory(tmp_path) -> None:
    from autoside.testing import tiny_search_recipe

    # DTL on stored features: the blocks after its merge run in every step, and are what checkpointing recomputes.
    recipe = tiny_search_recipe(train=64, val=32, test=32, sidenet={"name": "dtl"}, cache_dir=str(tmp_path))
    plain, _ = run_trial(recipe_from_dict(recipe))
    ckpt, _ = run_trial(recipe_from_dict({**recipe, "grad_checkpointing": True}))
    assert plain.feature_cache["status"] == "built" and ckpt.feature_cache["status"] == "hit"
    assert ckpt.history[0]["train_loss"] == pytest.approx(plain.history[0]["train_loss"], rel=1e-5)
    assert ckpt.peak_memory_bytes < 0.9 * plain.peak_memory_bytes
    assert ckpt.grad_checkpointing and not plain.grad_checkpointing
    # A family with nothing to recompute trains as it is, so a search may mix families under one recipe.
    linear, _ = run_trial(recipe_from_dict({**recipe, "sidenet": {"name": "linear"}, "grad_checkpointing": True}))
    assert math.isfinite(linear.history[0]["train_loss"]) and not linear.grad_checkpointing
