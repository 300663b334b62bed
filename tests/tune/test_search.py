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

from autoside.cli.main import main
from autoside.errors import ConfigError
from autoside.testing import tiny_search_recipe
from autoside.tune.pareto import non_dominated
from autoside.tune.reaper import process_group
from autoside.tune.results import open_search
from autoside.tune.space import space_from_dict

SPACE = {
    "name": "tiny",
    "families": {"linear": {"dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1}}, "full": {}},
}
RECIPE = tiny_search_recipe()
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
    from autoside.tune.sampler import AutosideOptunaSearch
    from autoside.tune.schedulers import RecordingASHA

    # A continuous knob: no proposal repeats another, so the trial numbers are 0..4.
    dropout = {"type": "float", "low": 0.0, "high": 0.5}
    space = space_from_dict({"name": "c", "families": {"linear": {"dropout": dropout}}})
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


# -- memory: the budget enforced during training (prediction error: tests/memory/test_predict.py)
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
    assert "mlflow_pending" not in record  # everything reached the store
    run = tracking.client(uri).get_run(record["mlflow_run_id"])
    assert run.data.tags["status"] == "infeasible"
    # Its memory at the stop is in its MLflow run; it has no accuracy (it never finished), in MLflow or its record.
    assert run.data.metrics["peak_memory_bytes"] == record["metrics"]["peak_memory_bytes"]
    assert run.data.tags["memory_source"] == "stopped_at_budget"
    assert "val_accuracy" not in run.data.metrics and "val_accuracy" not in record["metrics"]


def test_progress_shows_no_accuracy_for_infeasible(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from autoside.tune.api import SearchOptions
    from autoside.tune.driver import DriverState, Progress
    from autoside.tune.trial import result_record, write_json_atomic

    record = result_record(
        number=0,
        params={"family": "full"},
        config={"family": "full"},
        status="infeasible",
        metrics={"peak_memory_bytes": 3 * 2**20, "memory_source": "stopped_at_budget"},
        mlflow_run_id=None,
    )
    write_json_atomic(tmp_path / "trials" / "0000" / "result.json", record)
    meta = {"name": "p", "budget_bytes": 2**20}
    state = DriverState(tmp_path, meta, None, None, SearchOptions(), study_name="p", storage=None, context=None)
    Progress(state).told(0, "infeasible")
    line = capsys.readouterr().out
    assert "full: acc -, mem 3 MiB" in line and "best within budget -" in line


def test_progress_says_when_a_proposal_repeats_a_trial(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from autoside.tune.api import SearchOptions
    from autoside.tune.driver import DriverState, Progress
    from autoside.tune.space import space_from_dict

    meta = {"name": "p", "budget_bytes": 2**20}
    space = space_from_dict(SPACE)
    state = DriverState(tmp_path, meta, space, None, SearchOptions(), study_name="p", storage=None, context=None)
    # Stepped floats as a GP returns them, shown at their grid value (what the trial's config holds).
    for sampled, shown in ((0.19999999999999996, "0.2"), (6.938893903907228e-18, "0.0")):
        Progress(state).duplicate(7, 3, {"family": "linear", "linear/dropout": sampled})
        line = capsys.readouterr().out.strip()
        assert line == (
            f"proposal 7 repeats trial 0003 (linear: dropout={shown}): not trained again, "
            "its result told to the sampler"
        )


def test_the_first_line_says_when_trials_recompute_activations(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from autoside.tune.api import SearchOptions
    from autoside.tune.driver import DriverState, Progress
    from autoside.tune.space import space_from_dict

    for checkpointing in (False, True):
        meta = {"name": "p", "budget_bytes": 2**20, "recipe": {"grad_checkpointing": checkpointing}}
        opts = SearchOptions()
        state = DriverState(
            tmp_path, meta, space_from_dict(SPACE), None, opts, study_name="p", storage=None, context=None
        )
        state.remaining = 4
        Progress(state).start()
        line = capsys.readouterr().out.strip()
        assert line.startswith("search p: 4 trials to run, budget 1 MiB")
        assert line.endswith(", grad checkpointing") == checkpointing


def test_summaries_leave_out_knobs_that_shape_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A Side4Video trial with no temporal module shows no conv kernel or shift fraction: neither on the Pareto table
    nor on a repeat's line (the config holds them at their defaults; the sampled values would suggest a difference
    between two networks that is not there)."""
    from autoside.cli.tune import front_rows
    from autoside.tune.api import SearchOptions
    from autoside.tune.driver import DriverState, Progress
    from autoside.tune.results import TrialRecord
    from autoside.tune.space import load_space

    space = load_space(Path(__file__).resolve().parents[2] / "search_spaces" / "video.yaml")
    knobs = {"side_width": 64, "layer_set": "all", "temporal_kernel": 7, "temporal_spatial_kernel": 3}
    knobs |= {"shift_fraction": 0.5, "cls_shift": True, "frames": 4, "dropout": 0.0}
    shaping = {"side_width": 64, "layer_set": "all", "cls_shift": True, "frames": 4, "dropout": 0.0}
    for temporal, shown in (("none", {}), ("conv", {"temporal_kernel": 7, "temporal_spatial_kernel": 3})):
        params = {"family": "side4video", **{f"side4video/{k}": v for k, v in {**knobs, "temporal": temporal}.items()}}
        config = space.config_from_params(params).to_dict()
        record = TrialRecord("0001", 1, params, config, "ok", {"val_accuracy": 0.5, "peak_memory_bytes": 2**20})
        assert front_rows([record], None)[0]["choices"] == {**shaping, "temporal": temporal, **shown}
        meta = {"name": "p", "budget_bytes": 2**20}
        state = DriverState(tmp_path, meta, space, None, SearchOptions(), study_name="p", storage=None, context=None)
        Progress(state).duplicate(7, 3, params)
        line = capsys.readouterr().out
        assert ("temporal_kernel=7" in line) == (temporal == "conv") and "shift_fraction" not in line
    # CST from stage 2: the ratios of stages 0 and 1 (not copied) and the temperature (no logit distillation) go.
    cst = load_space(Path(__file__).resolve().parents[2] / "search_spaces" / "cst.yaml")
    knobs = {"first_stage": 2, "gate": "mtc", "writes_back": True, "importance": "magnitude", "drop_blocks": 1}
    knobs |= {"init": "copy", "lambda_feat": 1.0, "lambda_kd": 0.0, "temperature": 2.0, "distill_epochs": 1}
    knobs |= {**{f"stage_prune_ratios/{i}": r for i, r in enumerate((0.25, 0.5, 0.75, 0.5))}, "dropout": 0.1}
    params = {"family": "cst", **{f"cst/{k}": v for k, v in knobs.items()}}
    record = TrialRecord("0002", 2, params, cst.config_from_params(params).to_dict(), "ok", {})
    shown = front_rows([record], None)[0]["choices"]
    assert shown == {
        k: v for k, v in knobs.items() if k not in ("stage_prune_ratios/0", "stage_prune_ratios/1", "temperature")
    }


def test_a_trial_that_raises_is_failed_with_its_traceback_and_a_rerun_replaces_its_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception inside a trial fails that trial only, with the traceback as an MLflow artifact; the same trial
    number run again (a retry after its worker died) replaces its MLflow run instead of adding a second one."""
    import autoside.train
    from autoside.tune import tracking
    from autoside.tune.trial import TrialContext, execute_trial

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("side network exploded")

    monkeypatch.setattr(autoside.train, "train_model", broken)
    uri = tracking.default_tracking_uri(tmp_path)
    experiment, parent = tracking.start_parent(uri, tmp_path, "x", params={}, tags={}, artifacts={})
    ctx = TrialContext("x", SPACE, RECIPE, None, uri, experiment, parent)
    first = execute_trial(ctx, 3, {"family": "linear", "linear/dropout": 0.1})
    assert first["status"] == "failed" and "side network exploded" in first["reason"] and first["restarts"] == 0
    client = tracking.client(uri)
    local = client.download_artifacts(first["mlflow_run_id"], "error.txt", str(tmp_path))
    assert "RuntimeError: side network exploded" in Path(local).read_text()
    second = execute_trial(ctx, 3, {"family": "linear", "linear/dropout": 0.1})
    assert second["restarts"] == 1
    runs = tracking.trial_runs(uri, experiment, parent)
    assert [r.info.run_id for r in runs] == [second["mlflow_run_id"]]


# -- bad input: one line, non-zero exit, nothing written --------------------------------------------------------------
def test_budget_below_any_config_is_refused_before_start(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    space, recipe = _write(tmp_path)
    args = ["search", str(space), str(recipe), "--memory-budget", "1MiB", "--root", str(tmp_path / "runs")]
    code = main([*args, "--no-cache"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "below what any configuration of space 'tiny' can fit" in err
    assert not (tmp_path / "runs").exists()


def test_budget_floor_leaves_out_the_backbone_when_trials_may_read_the_cache(tmp_path: Path) -> None:
    """A trial on stored features holds neither the backbone nor images (a cached linear probe here needs ~65 KB),
    so the pre-flight floor does not refuse a budget below the backbone's weights; without the cache it does."""
    from dataclasses import replace

    from autoside.recipe import load_recipe
    from autoside.tune.api import _preflight
    from autoside.tune.space import load_space

    space_file, recipe_file = _write(tmp_path)
    space, recipe = load_space(space_file), load_recipe(recipe_file)
    _preflight(space, recipe, 2**20)
    with pytest.raises(ConfigError, match="below what any configuration"):
        _preflight(space, replace(recipe, feature_cache=False), 2**20)
    with pytest.raises(ConfigError, match="below what any configuration"):
        _preflight(space, replace(recipe, augment=True), 2**20)
    with pytest.raises(ConfigError, match="even on stored features, one batch of"):
        _preflight(space, recipe, 1024)  # below a batch of pooled features: no trial could ever run


def test_search_takes_recipe_overrides(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--set`` reaches the recipe before validation and the pre-flight (here: a batch of 4096 cannot fit 1 MiB)."""
    space, recipe = _write(tmp_path)
    root = ["--root", str(tmp_path / "runs")]
    code = main(
        ["search", str(space), str(recipe), "--set", "batch_size=4096", "--memory-budget", "1MiB", "--no-cache", *root]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "one input batch of 4096" in err and len(err.splitlines()) == 1
    assert main(["search", str(space), str(recipe), "--set", "epochs=0", *root]) == 2
    assert "epochs" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("which", ["space", "recipe"])
def test_binary_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, which: str) -> None:
    paths = dict(zip(("space", "recipe"), _write(tmp_path)))
    paths[which].write_bytes(bytes(range(128, 256)) * 4)
    assert main(["search", str(paths["space"]), str(paths["recipe"]), "--root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(paths[which]) in err and "UTF-8" in err


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
    deadline = time.time() + 30  # nothing the killed driver started outlives it (Ray's agents included)
    while left := process_group(proc.pid):
        assert time.time() < deadline, f"processes of the killed search still running: {left}"
        time.sleep(0.5)
    before = {p.parent.name: p.read_text() for p in trials.glob("*/result.json")}
    assert 2 <= len(before) < n
    time.sleep(3)  # let Ray's reaper take the killed driver's cluster down
    out = subprocess.run(
        [*cmd, "--resume", "k", "--json", *common[:2]], env=env, capture_output=True, text=True, timeout=420
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = open_search("k", root=root)
    assert result.status == "finished"
    study = optuna.load_study(study_name="k", storage=result.optuna_storage)
    repeats = {t.number for t in study.get_trials() if "duplicate_of" in t.user_attrs}
    # Every Optuna number is a trial run once or a repeated proposal that was not trained.
    assert sorted([r.number for r in result.trials] + sorted(repeats)) == list(range(len(study.get_trials())))
    assert len(result.trials) == n
    assert len({json.dumps(r.config, sort_keys=True) for r in result.trials}) == n  # the resume repeated nothing
    for trial_id, text in before.items():  # finished trials did not run again
        assert (trials / trial_id / "result.json").read_text() == text
    _, children, _ = _mlflow_trials(result)
    numbers = sorted(int(r.data.tags["autoside.trial_number"]) for r in children)
    assert numbers == sorted(r.number for r in result.trials)  # each trial once in MLflow
    assert {r.info.run_id for r in children} == {r.mlflow_run_id for r in result.trials}
    finished = [t for t in study.get_trials() if t.state != optuna.trial.TrialState.RUNNING]
    assert len(finished) == n + len(repeats) and not [t for t in study.get_trials() if t.state.name == "RUNNING"]


# -- in-process searches on a shared small local cluster (the ray_cluster fixture is in conftest.py) -------------
@pytest.mark.ray
@pytest.mark.slow
def test_search_tracks_every_trial_and_pareto_is_exact(
    tmp_path: Path, ray_cluster: None, capsys: pytest.CaptureFixture
) -> None:
    import autoside

    result = autoside.search(
        SPACE,
        {**RECIPE, "cache_dir": str(tmp_path / "features")},  # its own cache: the warm-up builds it
        num_samples=6,
        max_concurrent=2,
        memory_budget=BUDGET,
        seed=1,
        root=str(tmp_path / "runs"),
        name="main",
    )
    out = capsys.readouterr().out
    assert "front" in out  # live progress
    meta = json.loads((result.dir / "search.json").read_text())
    assert (
        meta["options"]["sampler"] == "family-gp"
    )  # the default "auto", resolved for 6 trials and stored for a resume
    warm = meta["feature_cache_warm"]
    assert "feature cache on node" in out and len(warm) == 1 and warm[0]["built"] > 0
    assert warm[0]["threads"] == 2  # the CPUs of the 2 trials it holds up, not 1
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
    # Trial numbers are Optuna's: a proposal that repeated a configuration took a number but was not trained.
    assert sorted(int(r.data.tags["autoside.trial_number"]) for r in children) == [r.number for r in result.trials]
    assert len({json.dumps(r.config, sort_keys=True) for r in result.trials}) == 6  # no configuration twice
    by_id = {r.info.run_id: r for r in children}
    front = {r.trial_id for r in result.pareto}
    for record in result.trials:
        run = by_id[record.mlflow_run_id]
        assert run.data.tags["status"] == record.status
        assert run.data.tags["pareto"] == str(record.trial_id in front).lower()
        assert run.data.params["family"] == record.config["family"]
        if record.status == "ok":
            assert client.get_metric_history(run.info.run_id, "val_accuracy")
            # Linear probes train on stored backbone features, built by a Ray task before the first trial: every
            # trial only reads them, and builds its side network without loading the backbone.
            assert run.data.tags["feature_cache"] == "hit" and run.data.tags["backbone_loaded"] == "no"
            assert run.data.metrics["feature_cache_built"] == 0 and run.data.metrics["backbone_loaded"] == 0
            assert {"feature_cache_hits", "trial_setup_seconds"} <= set(run.data.metrics)
            # The weights are in the run's artifacts only: trials write nothing into the driver's search folder.
            assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["side_network"]
            assert record.artifact_dir is None and record.raw["node_id"]
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
    repeats = [t for t in study.get_trials() if "duplicate_of" in t.user_attrs]
    assert parent.data.metrics["proposals_repeated"] == len(repeats)
    for t in repeats:  # told the outcome of the trial they repeat, tagged on that trial's run
        original = result.trial(t.user_attrs["duplicate_of"])
        assert t.values == [original.accuracy or 0.0, original.memory]
        assert int(by_id[original.mlflow_run_id].data.tags["autoside.proposed_again"]) >= 1
    for t in study.get_trials():
        if "duplicate_of" in t.user_attrs:
            continue
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
        if "duplicate_of" in t.user_attrs:  # a repeated proposal, told the outcome of the trial it repeats
            continue
        record = result.trial(t.number)
        if record.status == "pruned":
            assert t.state == optuna.trial.TrialState.PRUNED and t.values is None
            assert record.metrics.get("epoch", 0) < 3 and record.artifact_dir is None
        else:
            assert t.state == optuna.trial.TrialState.COMPLETE and record.metrics["epochs"] == 3
    assert all(r.status in ("ok", "pruned") for r in result.trials)
    assert "pruned" in {r.status for r in result.trials}  # seeded: ASHA stops trial 0002 after its first epoch
    assert "pruned" not in {r.status for r in result.pareto}


@pytest.mark.ray
@pytest.mark.slow
def test_knob_less_family_is_trained_once(tmp_path: Path, ray_cluster: None, capsys: pytest.CaptureFixture) -> None:
    import autoside

    result = autoside.search(
        {"name": "probe", "families": {"linear": {}}},
        RECIPE,
        num_samples=4,
        root=str(tmp_path / "runs"),
        name="once",
    )
    assert len(result.trials) == 1 and result.status == "finished"
    assert "no untried configuration of space 'probe' is left" in capsys.readouterr().out


@pytest.mark.ray
@pytest.mark.slow
def test_a_tracking_server_down_at_the_start_is_one_line(
    tmp_path: Path, ray_cluster: None, capsys: pytest.CaptureFixture
) -> None:
    from autoside.tune.loopback import free_port

    space, recipe = _write(tmp_path)
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    args = ["search", str(space), str(recipe), "--root", str(tmp_path / "runs"), "--name", "down"]
    assert main([*args, "--tracking-uri", uri, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--tracking-uri {uri}: the MLflow store does not answer" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs" / "down").exists()


@pytest.mark.ray
def test_an_unusable_tracking_uri_or_root_is_one_line(
    tmp_path: Path, ray_cluster: None, capsys: pytest.CaptureFixture
) -> None:
    space, recipe = _write(tmp_path)
    args = ["search", str(space), str(recipe), "--name", "s", "--quiet"]
    assert main([*args, "--root", str(tmp_path / "runs"), "--tracking-uri", "bogus://x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--tracking-uri bogus://x: MLflow cannot use this store" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # nothing of a search that never started is left
    (tmp_path / "afile").write_text("x")
    assert main([*args, "--root", str(tmp_path / "afile" / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--root {tmp_path / 'afile' / 'runs'}: cannot create the search folder there" in err
    assert len(err.splitlines()) == 1
