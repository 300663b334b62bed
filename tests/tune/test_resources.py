"""GPU packing that holds (on CPU): resource requests from node types that are not up, the per-trial cap
arithmetic, devices that contradict the request, and requeue on a share overrun vs infeasible on a budget overrun
(the CPU tracker capped at the share, through the same trial code path as CUDA)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from autoside.errors import ConfigError
from autoside.testing import tiny_search_recipe
from autoside.tune import resources as res

GiB, MiB = 1024**3, 1024**2
CLUSTER = {
    "available_node_types": {
        "head": {"resources": {"CPU": 0}},
        "gpu_worker": {"min_workers": 0, "max_workers": 4, "resources": {"CPU": 8, "GPU": 1}},
    }
}
SPACE = {"name": "tiny", "families": {"linear": {}, "full": {}}}
RECIPE = tiny_search_recipe(train=32, val=16, test=16, batch_size=16)
BUDGET = 64 * MiB  # linear (~23 MiB) fits, full (~110 MiB) does not


def _options(tmp_path: Path, **kw):  # noqa: ANN003, ANN202
    import yaml

    from autoside.tune.api import SearchOptions

    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(CLUSTER))
    return SearchOptions(cluster_config=str(path), root=str(tmp_path / "runs"), **kw)


def test_gpu_node_type_with_no_worker_up_still_gets_gpu_requests(tmp_path: Path) -> None:
    """No GPU is alive (this machine has none); the autoscaler's node types say a GPU worker can start: trials run
    on CUDA and each asks Ray for the fraction its predicted peak needs, plus the stated margin."""
    from autoside.recipe import recipe_from_dict
    from autoside.tune.driver import _resources, trial_device
    from autoside.tune.space import space_from_dict
    from autoside.tune.trial import TrialContext

    recipe = recipe_from_dict({**RECIPE, "device": "auto", "feature_cache": False})  # linear reads the backbone
    opts = _options(tmp_path, gpu_memory="2GiB")
    inventory, device = trial_device(opts, recipe)
    assert inventory.gpus_per_node == 1 and "node types" in inventory.source and device == "cuda"
    ctx = TrialContext("s", SPACE, {**recipe.to_dict(), "device": device}, BUDGET, "", "", "")
    state = SimpleNamespace(opts=opts, context=ctx, meta={"budget_bytes": BUDGET}, recipe=recipe)
    state.space = space_from_dict(SPACE)
    resources, packer = _resources(state)
    config = {"trial_number": 0, "params": {"family": "linear"}}
    config.update(packer(config))
    assert 10 * MiB < config["predicted_bytes"] < BUDGET
    assert config["gpu_fraction"] == res.gpu_fraction(config["predicted_bytes"], 2 * GiB) == 0.3
    assert config["share_bytes"] == int(0.3 * 2 * GiB) - res.CONTEXT_BYTES
    assert resources(config).bundles == [{"CPU": 1.0, "GPU": 0.3}]
    # Predictions are cached per configuration; the shared backbone is copied, so full's unfreezing does not leak.
    assert packer({"trial_number": 1, "params": {"family": "linear"}})["predicted_bytes"] == config["predicted_bytes"]
    assert packer.predict({"family": "full"}) > BUDGET
    assert packer.predict({"family": "linear", "linear/dropout": 0.1}) == pytest.approx(config["predicted_bytes"], 0.01)
    assert len(packer.predict.cache) == 3
    # A requeued trial asks for the share the budget needs.
    bigger = packer({**config, "attempt": 2})
    assert bigger["gpu_fraction"] == res.gpu_fraction(BUDGET, 2 * GiB) and bigger["share_bytes"] >= BUDGET
    # A fixed request is passed through as it is.
    fixed, none = _resources(SimpleNamespace(**{**vars(state), "opts": _options(tmp_path, gpus_per_trial=0.5)}))
    assert none is None and fixed({"trial_number": 0, "params": {}}).bundles == [{"CPU": 1.0, "GPU": 0.5}]


def test_packer_predicts_a_cached_trial_on_features_as_it_will_train(tmp_path: Path) -> None:
    """A trial that will read the feature cache holds neither the backbone nor images: the packer predicts it on
    features of a few training images (no cache is built), within 5 % of what the cached trial then measures."""
    from dataclasses import replace

    from autoside.recipe import recipe_from_dict
    from autoside.train import run_trial
    from autoside.tune.space import space_from_dict

    recipe = recipe_from_dict({**RECIPE, "cache_dir": str(tmp_path / "cache")})
    cached = res.CachedPredictor(recipe, space_from_dict(SPACE))({"family": "linear"})
    uncached = res.CachedPredictor(replace(recipe, feature_cache=False), space_from_dict(SPACE))({"family": "linear"})
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    result, _ = run_trial(recipe, space_from_dict(SPACE).config_from_params({"family": "linear"}))
    assert result.feature_cache["status"] == "built"
    assert abs(cached / result.peak_memory_bytes - 1) <= 0.05, (cached, result.peak_memory_bytes)
    assert uncached > 20 * cached


def test_devices_that_contradict_the_gpu_request_are_refused(tmp_path: Path) -> None:
    from autoside.recipe import recipe_from_dict
    from autoside.tune.driver import trial_device

    auto = recipe_from_dict({**RECIPE, "device": "auto"})
    with pytest.raises(ConfigError, match="device: 'auto' but trials ask Ray for no GPU"):
        trial_device(_options(tmp_path, gpus_per_trial=0), auto)
    with pytest.raises(ConfigError, match="device: 'cuda' but trials ask Ray for no GPU"):
        trial_device(_options(tmp_path, gpus_per_trial=0), recipe_from_dict({**RECIPE, "device": "cuda"}))
    no_gpu = res.GpuInventory(0.0, "nodes alive now")
    with pytest.raises(ConfigError, match="--gpus-per-trial: trials ask for 1 GPU but the cluster has none"):
        res.check_device("auto", 1.0, no_gpu)
    assert res.check_device("auto", 0.0, no_gpu) == "cpu"  # a CPU-only cluster: auto means CPU
    assert trial_device(_options(tmp_path), recipe_from_dict(RECIPE))[1] == "cpu"  # device: cpu asks for no GPU
    assert res.cluster_gpus(gpus_per_node=4).gpus_per_node == 4


def test_cap_arithmetic() -> None:
    # (predicted * 1.25 + 512 MiB context) / GPU memory, rounded up to a twentieth, at least one, at most a GPU.
    assert res.gpu_fraction(1 * GiB, 80 * GiB) == 0.05
    assert res.gpu_fraction(10 * GiB, 80 * GiB) == 0.2  # 13 GiB / 80 GiB = 0.1625 -> 0.2
    assert res.gpu_fraction(12 * GiB, 62 * GiB) == 0.25  # exactly 15.5 GiB needed: a quarter, not 0.3
    assert res.gpu_fraction(12 * GiB + 1, 62 * GiB) == 0.3
    assert res.gpu_fraction(100 * GiB, 80 * GiB) == 1.0
    assert res.share_bytes(0.25, 80 * GiB) == 20 * GiB - 512 * MiB
    assert res.per_trial_cap(6 * GiB, 4 * GiB) == 4 * GiB
    assert res.per_trial_cap(6 * GiB, 8 * GiB) == 6 * GiB
    assert res.per_trial_cap(None, 8 * GiB) == 8 * GiB
    assert res.per_trial_cap(6 * GiB, None) == 6 * GiB and res.per_trial_cap(None, None) is None
    assert res.overrun_status(7 * GiB, 6 * GiB, attempt=1) == "infeasible"
    assert res.overrun_status(5 * GiB, 6 * GiB, attempt=1) == "requeue"
    assert res.overrun_status(5 * GiB, 6 * GiB, attempt=2) == "infeasible"
    assert res.overrun_status(5 * GiB, None, attempt=1) == "requeue"
    msg = "CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 79.19 GiB"
    assert res.cuda_oom_bytes(msg, 100) == 100 + 20 * MiB


def _context(tmp_path: Path):  # noqa: ANN202
    from autoside.tune import tracking
    from autoside.tune.trial import TrialContext

    uri = tracking.default_tracking_uri(tmp_path)
    experiment, parent = tracking.start_parent(uri, tmp_path, "x", params={}, tags={}, artifacts={})
    # No feature cache: the trial computes the backbone itself, so linear's peak (~23 MiB) includes it.
    recipe = {**RECIPE, "feature_cache": False}
    return TrialContext("x", SPACE, recipe, BUDGET, uri, experiment, parent), uri


@pytest.mark.slow
def test_share_overrun_requeues_budget_overrun_is_infeasible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import autoside.memory.predict as pm
    from autoside.tune import tracking
    from autoside.tune.trial import execute_trial

    ctx, uri = _context(tmp_path)
    # linear needs ~23 MiB: packed into an 8 MiB share under a 64 MiB budget it runs out of its share -> requeue.
    record = execute_trial(ctx, 0, {"family": "linear"}, share_bytes=8 * MiB)
    assert record["status"] == "requeue" and 8 * MiB < record["metrics"]["peak_memory_bytes"] <= BUDGET
    assert tracking.trial_runs(uri, ctx.experiment_id, ctx.parent_run_id) == []  # nothing recorded, not even a run
    # Again with the share the budget needs: it fits, and says it was the second attempt.
    record = execute_trial(ctx, 0, {"family": "linear"}, share_bytes=BUDGET, attempt=2)
    assert record["status"] == "ok" and record["attempt"] == 2
    assert abs(record["metrics"]["prediction_error"]) <= 0.10
    shown = tracking.client(uri).get_run(record["mlflow_run_id"]).data.metrics
    assert shown["predicted_peak_bytes"] == record["metrics"]["predicted_peak_bytes"]
    assert shown["prediction_error"] == pytest.approx(record["metrics"]["prediction_error"])
    # full (~110 MiB) let through by a wrong prediction: out of its 32 MiB share first (requeue), then over the
    # budget with the larger share (infeasible, never requeued twice).
    real = pm.predict_peak_memory

    def optimistic(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        p = real(*args, **kwargs)
        return pm.MemoryPrediction(1, p.method, p.batch_sizes, p.measured_bytes, p.seconds)

    monkeypatch.setattr(pm, "predict_peak_memory", optimistic)
    assert execute_trial(ctx, 1, {"family": "full"}, share_bytes=32 * MiB)["status"] == "requeue"
    record = execute_trial(ctx, 1, {"family": "full"}, share_bytes=BUDGET, attempt=2)
    assert record["status"] == "infeasible" and record["metrics"]["peak_memory_bytes"] > BUDGET
    assert len(tracking.trial_runs(uri, ctx.experiment_id, ctx.parent_run_id)) == 2


def test_searcher_hands_a_requeued_trial_out_again_and_then_finishes(tmp_path: Path) -> None:
    from ray.tune.search import Searcher

    from autoside.tune.sampler import AutosideOptunaSearch
    from autoside.tune.space import space_from_dict

    searcher = AutosideOptunaSearch(
        space_from_dict(SPACE),
        objectives=("accuracy", "memory"),
        sampler=optuna.samplers.RandomSampler(seed=0),
        storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}"),
        study_name="s",
        budget_bytes=1000,
        resources=lambda c: {"share_bytes": 1000 if c.get("attempt", 1) > 1 else 100},
    )
    searcher.limit = 2
    first, second = searcher.suggest("a"), searcher.suggest("b")
    assert first["share_bytes"] == 100 and second["trial_number"] == 1
    assert searcher.suggest("c") is None  # the limit is reached: wait for the running trials
    searcher.on_trial_complete("a", {"autoside_status": "requeue", "peak_memory_bytes": 120})
    again = searcher.suggest("d")
    assert again["trial_number"] == first["trial_number"] and again["attempt"] == 2 and again["share_bytes"] == 1000
    assert searcher.study.get_trials()[first["trial_number"]].state == optuna.trial.TrialState.RUNNING
    final = {"autoside_status": "ok", "val_accuracy": 0.5, "peak_memory_bytes": 500}
    searcher.on_trial_complete("b", final)
    assert searcher.suggest("e") is None  # "d" still runs
    searcher.on_trial_complete("d", final)
    assert searcher.suggest("f") == Searcher.FINISHED
    assert [t.state for t in searcher.study.get_trials()] == [optuna.trial.TrialState.COMPLETE] * 2


def test_packer_predicts_a_checkpointed_trial_as_it_will_train(tmp_path: Path) -> None:
    """With the recipe's grad_checkpointing a trial keeps fewer activations; the packer's share follows it."""
    from dataclasses import replace

    from autoside.recipe import recipe_from_dict
    from autoside.tune.space import space_from_dict

    recipe = recipe_from_dict({**RECIPE, "feature_cache": False})
    space = space_from_dict({"name": "tiny", "families": {"full": {}}})
    plain = res.CachedPredictor(recipe, space)({"family": "full"})
    ckpt = res.CachedPredictor(replace(recipe, grad_checkpointing=True), space)({"family": "full"})
    assert ckpt < 0.9 * plain, (ckpt, plain)
