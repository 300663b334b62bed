"""Early stopping in a two-objective search: MOASHA promotes by Pareto rank over (accuracy, memory), so no trial
that is non-dominated at its rung is stopped and the cheap end of the front survives; trials that did not finish
stay out of the rungs; stopped trials are told to Optuna as PRUNED. Checked on a synthetic trainable, with the real
Ray Tune controller on a local cluster bound to 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from ray.tune.schedulers import TrialScheduler

from autoside.tune.pareto import non_dominated
from autoside.tune.schedulers import MOASHA, ParetoRungs, RecordingASHA, ranks

# (peak memory MiB, accuracy after epoch 1): a trade-off front (cheap & weak ... costly & strong) and dominated ones.
CURVES = {
    "cheap": (10, 0.40),
    "mid": (40, 0.70),
    "big": (90, 0.90),
    "bad1": (60, 0.35),
    "bad2": (80, 0.50),
    "bad3": (70, 0.30),
    "mid2": (30, 0.60),
    "bad4": (95, 0.45),
}
EPOCHS = 4


def _accuracy(name: str, epoch: int) -> float:
    return CURVES[name][1] + 0.02 * (epoch - 1)


def test_ranks_are_non_dominated_sorting() -> None:
    points = [(0.9, 90), (0.4, 10), (0.35, 60), (0.3, 70), (0.7, 40)]
    assert ranks(points, ["max", "min"]) == [0, 0, 1, 2, 0]


def test_rungs_keep_every_non_dominated_trial_and_the_cheap_end() -> None:
    rungs = ParetoRungs(max_t=EPOCHS, grace_period=1, reduction_factor=2)
    assert rungs.milestones == [1, 2]
    alive = set(CURVES)
    for epoch in range(1, EPOCHS + 1):
        for name in list(CURVES):
            if name not in alive:
                continue
            point = (_accuracy(name, epoch), CURVES[name][0])
            milestone = max((m for m in rungs.milestones if m <= epoch), default=None)
            if milestone is not None and name not in rungs.rungs[milestone]:
                recorded = list(rungs.rungs[milestone].values())
                front = not any(
                    q[0] >= point[0] and q[1] <= point[1] and tuple(q) != point for q in recorded
                )  # non-dominated among the trials at this rung when it arrives
                if not rungs.on_result(name, epoch, point):
                    assert not front, f"{name} was non-dominated at rung {milestone} and was stopped"
                    alive.discard(name)
    assert {"cheap", "mid2", "mid", "big"} <= alive  # the whole front survives, its cheap end included
    assert alive - {"cheap", "mid2", "mid", "big"} < {"bad1", "bad2", "bad3", "bad4"}  # some dominated were stopped


def test_unfinished_trials_stay_out_of_the_rungs() -> None:
    """An infeasible trial's final result (accuracy 0, refused at epoch 1) is never ranked, by MOASHA or ASHA."""
    final = {"autoside_status": "infeasible", "val_accuracy": 0.0, "peak_memory_bytes": 10**9, "training_iteration": 1}
    moasha = MOASHA(max_t=EPOCHS)
    trial = SimpleNamespace(trial_id="x")
    assert moasha.on_trial_result(None, trial, final) == TrialScheduler.CONTINUE
    assert all(not rung for rung in moasha.rungs.rungs.values())
    asha = RecordingASHA(metric="val_accuracy", mode="max", max_t=EPOCHS, grace_period=1, reduction_factor=2)
    asha.on_trial_add(None, trial)
    asha.on_trial_result(None, trial, final)
    asha.on_trial_complete(None, trial, final)
    assert all(not recorded for bracket in asha._brackets for _, recorded in bracket._rungs)


def test_stopped_trials_are_told_pruned(tmp_path: Path) -> None:
    from autoside.tune.sampler import AutosideOptunaSearch
    from autoside.tune.space import space_from_dict

    dropout = {"type": "float", "low": 0.0, "high": 0.5}
    scheduler = MOASHA(max_t=EPOCHS)
    searcher = AutosideOptunaSearch(
        space_from_dict({"name": "c", "families": {"linear": {"dropout": dropout}}}),
        objectives=("accuracy", "memory"),
        sampler=optuna.samplers.RandomSampler(seed=0),
        storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}"),
        study_name="s",
        budget_bytes=None,
        scheduler=scheduler,
    )
    for trial_id, (acc, mem) in {"a": (0.8, 100), "b": (0.9, 50), "c": (0.5, 200)}.items():
        searcher.suggest(trial_id)
        result = {"val_accuracy": acc, "peak_memory_bytes": mem, "training_iteration": 1}
        searcher.on_trial_result(trial_id, result)
        if scheduler.on_trial_result(None, SimpleNamespace(trial_id=trial_id), result) == TrialScheduler.STOP:
            searcher.on_trial_complete(trial_id, result)
    assert scheduler.stopped == {"c"}
    states = {t.number: t.state for t in searcher.study.get_trials()}
    assert states[2] == optuna.trial.TrialState.PRUNED


def _synthetic(config: dict) -> None:
    from ray import tune

    for epoch in range(1, EPOCHS + 1):
        acc = config["acc"] + 0.02 * (epoch - 1)
        tune.report({"val_accuracy": acc, "peak_memory_bytes": config["mem"]})


@pytest.mark.ray
@pytest.mark.slow
def test_moasha_in_ray_tune(tmp_path: Path) -> None:
    import ray
    from ray import tune

    ray.init(address="local", num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        scheduler = MOASHA(max_t=EPOCHS)
        names = list(CURVES)
        tuner = tune.Tuner(
            _synthetic,
            param_space={
                "name": tune.grid_search(names),
                "mem": tune.sample_from(lambda spec: CURVES[spec.config.name][0]),
                "acc": tune.sample_from(lambda spec: CURVES[spec.config.name][1]),
            },
            tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=1),
            run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
        )
        results = tuner.fit()
    finally:
        ray.shutdown()
    epochs = {r.config["name"]: r.metrics["training_iteration"] for r in results}
    assert epochs["cheap"] == EPOCHS and epochs["big"] == EPOCHS  # both ends of the front train to the end
    # Every stopped trial was dominated at the rung where it stopped.
    for milestone, rung in scheduler.rungs.rungs.items():
        ids, points = list(rung), list(rung.values())
        for i in non_dominated(points, ["max", "min"]):
            assert epochs[_name(results, ids[i])] > milestone
    assert any(e < EPOCHS for e in epochs.values())


def _name(results, trial_id: str) -> str:  # noqa: ANN001
    return next(r.config["name"] for r in results if r.path and trial_id in r.path)


def _past(number: int, status: str, name: str, epochs: int) -> SimpleNamespace:
    """A finished trial's record as a resumed driver reads it: an ok trial's history, a pruned one's last epoch."""
    history = [
        {"epoch": e, "val_accuracy": _accuracy(name, e), "peak_memory_bytes": CURVES[name][0]}
        for e in range(1, epochs + 1)
    ]
    metrics = {"history": history, **history[-1]} if status == "ok" else dict(history[-1])
    return SimpleNamespace(number=number, status=status, metrics=metrics)


@pytest.mark.parametrize("kind", ["moasha", "asha"])
def test_a_resumed_search_faces_the_rungs_its_first_driver_filled(kind: str) -> None:
    from autoside.tune.schedulers import make_scheduler, replay_records

    before = [
        _past(0, "ok", "big", EPOCHS),
        _past(1, "ok", "mid", EPOCHS),
        _past(2, "pruned", "cheap", 1),
        _past(3, "infeasible", "mid2", 1),  # never in a rung
        _past(4, "ok", "mid2", EPOCHS),
    ]
    fresh = make_scheduler(kind, epochs=EPOCHS, objectives=("accuracy", "memory"))
    resumed = make_scheduler(kind, epochs=EPOCHS, objectives=("accuracy", "memory"))
    assert replay_records(resumed, before) == 3 * EPOCHS + 1
    assert replay_records(None, before) == 0
    if kind == "moasha":
        assert {m: sorted(r) for m, r in resumed.rungs.rungs.items()} == {
            1: ["past-0", "past-1", "past-2", "past-4"],
            2: ["past-0", "past-1", "past-4"],
        }
    # A dominated trial after the restart: let through by empty rungs, stopped by the replayed ones.
    for scheduler in (fresh, resumed):
        trial = SimpleNamespace(trial_id="late")
        scheduler.on_trial_add(None, trial)
    result = {"training_iteration": 1, "val_accuracy": 0.30, "peak_memory_bytes": 95}
    assert fresh.on_trial_result(None, SimpleNamespace(trial_id="late"), result) == TrialScheduler.CONTINUE
    assert resumed.on_trial_result(None, SimpleNamespace(trial_id="late"), result) == TrialScheduler.STOP
