"""The search end to end (real Ray bound to 127.0.0.1, real Optuna, real SQLite MLflow), the searcher's telling
rules, memory prediction and budget enforcement, resume after SIGKILL, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch

from autoside.cli.main import main
from autoside.tune.pareto import non_dominated
from autoside.tune.results import open_search
from autoside.tune.space import space_from_dict

SPACE = {
    "name": "tiny",
    "families": {"linear": {"dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1}}, "full": {}},
}
RECIPE = {
    "name": "tinyvit",
    "dataset": {"name": "digits", "train_size": 192, "val_size": 64, "test_size": 64},
    "backbone": {"name": "vit_tiny_patch16_224", "weights": "random"},
    "image_size": 32,
    "epochs": 1,
    "batch_size": 32,
    "lr": 0.003,
    "warmup_epochs": 0,
    "device": "cpu",
    "threads": 1,
}
BUDGET = 64 * 2**20  # linear probes (~23 MiB) fit, full fine-tuning (~110 MiB) does not


def _write(tmp: Path, space: dict = SPACE, recipe: dict = RECIPE) -> tuple[Path, Path]:
    import yaml

    (tmp / "space.yaml").write_text(yaml.safe_dump(space))
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return tmp / "space.yaml", tmp / "recipe.yaml"


def _mlflow_trials(result) -> list:  # noqa: ANN001
    from mlflow.tracking import MlflowClient

    client = MlflowClient(result.tracking_uri)
    experiment = client.get_experiment_by_name(result.name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1
    return parents[0], children, client


# -- the searcher's telling rules (real Optuna, no cluster) ----------------------------------------------------------
def test_searcher_tells_pruned_infeasible_and_failed_correctly(tmp_path: Path) -> None:
    from autoside.tune.sampler import AutosideOptunaSearch, RecordingASHA

    space = space_from_dict(SPACE)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}")
    scheduler = RecordingASHA(metric="val_accuracy", mode="max", max_t=3)
    recorded = []
    searcher = AutosideOptunaSearch(
        space,
        objectives=("accuracy", "memory"),
        sampler=optuna.samplers.RandomSampler(seed=0),
        storage=storage,
        study_name="s",
        budget_bytes=1000,
        scheduler=scheduler,
        on_finish=lambda number, status, last, params: recorded.append((number, status)),
    )
    ids = [f"t{i}" for i in range(5)]
    configs = [searcher.suggest(t) for t in ids]
    assert [c["trial_number"] for c in configs] == [0, 1, 2, 3, 4]
    final = {"autoside_status": "ok", "val_accuracy": 0.8, "peak_memory_bytes": 900}
    searcher.on_trial_complete("t0", final)
    searcher.on_trial_complete(
        "t1", {**final, "autoside_status": "infeasible", "val_accuracy": 0.0, "peak_memory_bytes": 5000}
    )
    # An epoch result, then the scheduler stops the trial: PRUNED, never a COMPLETE low-fidelity point.
    searcher.on_trial_result("t2", {"val_accuracy": 0.3, "peak_memory_bytes": 800, "training_iteration": 1})
    scheduler.stopped.add("t2")
    searcher.on_trial_complete("t2", {"val_accuracy": 0.3, "peak_memory_bytes": 800, "training_iteration": 1})
    searcher.on_trial_complete("t3", None, error=True)
    # Stopped by a shutdown (not the scheduler, no error): left RUNNING for a resume to run again.
    searcher.on_trial_complete("t4", {"val_accuracy": 0.2, "training_iteration": 1})
    trials = {t.number: t for t in searcher.study.get_trials()}
    S = optuna.trial.TrialState
    assert trials[0].state == S.COMPLETE and trials[0].values == [0.8, 900]
    assert trials[0].constraints == {"memory": -100}
    assert trials[1].state == S.COMPLETE and trials[1].constraints["memory"] == 4000
    assert trials[1].user_attrs["autoside_status"] == "infeasible"
    assert trials[2].state == S.PRUNED and trials[2].values is None and trials[2].constraints == {"memory": -200}
    assert trials[3].state == S.FAIL
    assert trials[4].state == S.RUNNING
    assert recorded == [(2, "pruned"), (3, "failed")]
    # Optuna's own Pareto set ignores the infeasible trial.
    assert [t.number for t in searcher.study.best_trials] == [0]


# -- memory: prediction error, and the budget enforced during training ------------------------------------------------
def _tiny_model(family: str):  # noqa: ANN202
    from autoside.data import load_task
    from autoside.recipe import recipe_from_dict
    from autoside.sidenets import resolve
    from autoside.train import build_model

    recipe = recipe_from_dict(RECIPE)
    task = load_task(recipe.dataset)
    return recipe, task, build_model(recipe, task.num_classes, resolve(family))


@pytest.mark.parametrize("family", ["linear", "full"])
def test_memory_prediction_error(family: str) -> None:
    from autoside.memory.predict import predict_peak_memory
    from autoside.train import train_model

    torch.set_num_threads(1)
    recipe, task, model = _tiny_model(family)
    prediction = predict_peak_memory(model, task, recipe)
    measured = train_model(model, task, recipe, device=torch.device("cpu")).peak_memory_bytes
    error = prediction.predicted_bytes / measured - 1
    assert 0.0 <= error <= 0.10, f"prediction {prediction.predicted_bytes} vs measured {measured}: {error:+.1%}"
    assert prediction.seconds < 10


def test_budget_crossed_during_training_is_infeasible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial the predictor lets through but that crosses the budget while training is stopped by the CPU tracker
    and recorded as infeasible with its memory (not failed)."""
    import autoside.memory.predict as pm
    from autoside.tune import tracking
    from autoside.tune.trial import TrialContext, execute_trial

    real = pm.predict_peak_memory

    def optimistic(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        p = real(*args, **kwargs)
        return pm.MemoryPrediction(1, p.method, p.batch_sizes, p.measured_bytes, p.seconds)

    monkeypatch.setattr(pm, "predict_peak_memory", optimistic)
    uri = tracking.default_tracking_uri(tmp_path)
    experiment, parent = tracking.start_parent(uri, tmp_path, "x", params={}, tags={}, artifacts={})
    ctx = TrialContext(
        name="x",
        search_dir=str(tmp_path / "x"),
        space=SPACE,
        recipe=RECIPE,
        budget_bytes=BUDGET,
        tracking_uri=uri,
        experiment_id=experiment,
        parent_run_id=parent,
    )
    record = execute_trial(ctx, 0, {"family": "full"})
    assert record["status"] == "infeasible"
    assert record["metrics"]["memory_source"] == "stopped_at_budget"
    assert record["metrics"]["peak_memory_bytes"] > BUDGET
    assert json.loads((tmp_path / "x" / "trials" / "0000" / "result.json").read_text())["status"] == "infeasible"
    run = tracking.client(uri).get_run(record["mlflow_run_id"])
    assert run.data.tags["status"] == "infeasible"


# -- bad input: one line, non-zero exit, nothing written --------------------------------------------------------------
def test_budget_below_any_config_is_refused_before_start(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    space, recipe = _write(tmp_path)
    code = main(["search", str(space), str(recipe), "--memory-budget", "1MiB", "--root", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "below what any configuration of space 'tiny' can fit" in err
    assert not (tmp_path / "runs").exists()


def test_resume_of_unknown_search(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["search", "--resume", "nope", "--root", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err == f"autoside: error: no search named 'nope' in {tmp_path / 'runs'}"
    assert not (tmp_path / "runs").exists()


def test_unknown_family_in_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    space, recipe = _write(tmp_path, space={"families": {"lora": {}}})
    assert main(["search", str(space), str(recipe), "--root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown family 'lora'" in err and len(err.splitlines()) == 1


# -- kill the driver, resume (own Ray cluster in subprocesses; runs before the in-process cluster starts) ------------
@pytest.mark.ray
@pytest.mark.slow
def test_kill_driver_and_resume(tmp_path: Path) -> None:
    space, recipe = _write(
        tmp_path, space={"families": SPACE["families"] | {}, "name": "tiny"}, recipe={**RECIPE, "epochs": 2}
    )
    root, n = tmp_path / "runs", 6
    cmd = [sys.executable, "-m", "autoside.cli", "search"]
    common = ["--root", str(root), "--quiet", "--max-concurrent", "2", "--memory-budget", str(BUDGET)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*cmd, str(space), str(recipe), "--name", "k", "--num-samples", str(n), *common],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    trials = root / "k" / "trials"
    deadline = time.time() + 240
    while len(list(trials.glob("*/result.json"))) < 2:
        assert proc.poll() is None, "the search ended before it could be killed"
        assert time.time() < deadline, "no trial finished in time"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p.parent.name: p.read_text() for p in trials.glob("*/result.json")}
    assert 2 <= len(before) < n
    time.sleep(3)  # let Ray's reaper take the killed driver's cluster down
    out = subprocess.run(
        [*cmd, "--resume", "k", "--json", *common[:2]], env=env, capture_output=True, text=True, timeout=420
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = open_search("k", root=root)
    assert result.status == "finished"
    assert sorted(r.number for r in result.trials) == list(range(len(result.trials)))
    assert len(result.trials) == n
    for trial_id, text in before.items():  # finished trials did not run again
        assert (trials / trial_id / "result.json").read_text() == text
    _, children, _ = _mlflow_trials(result)
    numbers = sorted(int(r.data.tags["autoside.trial_number"]) for r in children)
    assert numbers == sorted(r.number for r in result.trials)  # each trial once in MLflow
    assert {r.info.run_id for r in children} == {r.mlflow_run_id for r in result.trials}
    study = optuna.load_study(study_name="k", storage=result.optuna_storage)
    finished = [t for t in study.get_trials() if t.state != optuna.trial.TrialState.RUNNING]
    assert len(finished) == n and not [t for t in study.get_trials() if t.state.name == "RUNNING"]


# -- in-process searches on a shared small local cluster -------------------------------------------------------------
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


@pytest.mark.ray
@pytest.mark.slow
def test_search_tracks_every_trial_and_pareto_is_exact(
    tmp_path: Path, ray_cluster: None, capsys: pytest.CaptureFixture
) -> None:
    import autoside

    result = autoside.search(
        SPACE,
        RECIPE,
        num_samples=6,
        max_concurrent=2,
        memory_budget=BUDGET,
        seed=1,
        root=str(tmp_path / "runs"),
        name="main",
    )
    assert "front" in capsys.readouterr().out  # live progress
    assert len(result.trials) == 6 and result.status == "finished"
    statuses = {r.status for r in result.trials}
    assert statuses <= {"ok", "infeasible"} and "ok" in statuses and "infeasible" in statuses

    # Pareto set == brute-force non-dominated filter of the feasible trials.
    pool = [r for r in result.trials if r.status == "ok" and r.memory <= BUDGET]
    brute = [
        p
        for p in pool
        if not any(
            q.accuracy >= p.accuracy and q.memory <= p.memory and (q.accuracy > p.accuracy or q.memory < p.memory)
            for q in pool
        )
    ]
    assert {r.trial_id for r in result.pareto} == {r.trial_id for r in brute}
    pts = [(r.accuracy, r.memory) for r in pool]
    assert {pool[i].trial_id for i in non_dominated(pts, ["max", "min"])} == {r.trial_id for r in brute}

    # MLflow: one parent, each trial once, status and pareto tags, per-epoch metrics, the side network artifact.
    parent, children, client = _mlflow_trials(result)
    assert sorted(int(r.data.tags["autoside.trial_number"]) for r in children) == list(range(6))
    by_id = {r.info.run_id: r for r in children}
    front = {r.trial_id for r in result.pareto}
    for record in result.trials:
        run = by_id[record.mlflow_run_id]
        assert run.data.tags["status"] == record.status
        assert run.data.tags["pareto"] == str(record.trial_id in front).lower()
        assert run.data.params["family"] == record.config["family"]
        if record.status == "ok":
            assert client.get_metric_history(run.info.run_id, "val_accuracy")
            # Linear probes train on stored backbone features: the first one on a worker builds them.
            assert run.data.tags["feature_cache"] in ("built", "hit")
            assert {"feature_cache_hits", "feature_cache_build_seconds"} <= set(run.data.metrics)
            assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["side_network"]
            assert (record.artifact_dir / "side_model.safetensors").is_file()
        else:  # infeasible: refused by the predictor with its memory, never on the front
            assert record.memory > BUDGET and record.trial_id not in front
            assert record.metrics["memory_source"] == "predicted"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"pareto.csv", "pareto.png", "space.json", "recipe.json"} <= artifacts
    assert len(client.get_metric_history(parent.info.run_id, "hypervolume")) == 6
    assert parent.data.params["budget_bytes"] == str(BUDGET)
    assert "version.ray" in parent.data.tags and "hardware.cpu" in parent.data.tags

    # Optuna: the constraint is set before the tell; infeasible trials are COMPLETE with a positive constraint.
    study = optuna.load_study(study_name="main", storage=result.optuna_storage)
    for t in study.get_trials():
        record = result.trial(t.number)
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert (t.constraints["memory"] > 0) == (record.status == "infeasible")

    # Replay reproduces each recorded config; best() picks within a budget.
    space = result.space
    for record in result.trials:
        assert space.config_from_params(record.params).to_dict() == record.config
    best = result.best()
    assert best.status == "ok" and best.accuracy == max(r.accuracy for r in pool)


@pytest.mark.ray
@pytest.mark.slow
def test_asha_prunes_are_recorded_as_pruned(tmp_path: Path, ray_cluster: None) -> None:
    import autoside

    space = {
        "name": "lin",
        "families": {"linear": {"dropout": {"type": "float", "low": 0.0, "high": 0.9, "step": 0.1}}},
    }
    recipe = {**RECIPE, "epochs": 3, "lr": 0.0003}
    result = autoside.search(
        space,
        recipe,
        num_samples=6,
        max_concurrent=1,
        scheduler="asha",
        sampler="random",
        seed=3,
        root=str(tmp_path / "runs"),
        name="asha",
        progress=False,
    )
    study = optuna.load_study(study_name="asha", storage=result.optuna_storage)
    for t in study.get_trials():
        record = result.trial(t.number)
        if record.status == "pruned":
            assert t.state == optuna.trial.TrialState.PRUNED and t.values is None
            assert record.metrics.get("epoch", 0) < 3 and record.artifact_dir is None
        else:
            assert t.state == optuna.trial.TrialState.COMPLETE and record.metrics["epochs"] == 3
    assert all(r.status in ("ok", "pruned") for r in result.trials)
    assert "pruned" in {r.status for r in result.trials}  # seeded: ASHA stops trial 0002 after its first epoch
    assert "pruned" not in {r.status for r in result.pareto}
