"""Each configuration is trained once per search (real Optuna study in SQLite, the searcher without a cluster):
repeats are told the earlier outcome and not handed to Ray, a knob-less family runs once, a fully tried space
ends the search, and a resumed search neither repeats nor re-proposes what it ran."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from ray.tune.search import Searcher

from autoside.tune.dedup import config_key
from autoside.tune.sampler import AutosideOptunaSearch
from autoside.tune.space import space_from_dict

SPACE = {
    "name": "tiny",
    "families": {"linear": {"dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1}}, "full": {}},
}


def _searcher(tmp_path: Path, space: dict = SPACE, sampler=None, **kwargs):  # noqa: ANN001, ANN202
    return AutosideOptunaSearch(
        space_from_dict(space),
        objectives=("accuracy", "memory"),
        sampler=sampler or optuna.samplers.RandomSampler(seed=0),
        storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}"),
        study_name="s",
        budget_bytes=None,
        **kwargs,
    )


def _result(params: dict) -> dict:
    """A deterministic outcome per configuration."""
    dropout = params.get("linear/dropout", 0.0)
    return {"autoside_status": "ok", "val_accuracy": 0.5 + dropout, "peak_memory_bytes": 1000 + int(100 * dropout)}


def _key(space: dict, params: dict) -> str:
    return config_key(space_from_dict(space).config_from_params(params).to_dict())


def test_every_configuration_runs_once_and_a_tried_space_ends_the_search(tmp_path: Path) -> None:
    repeats = []
    searcher = _searcher(tmp_path, on_duplicate=lambda n, original, params: repeats.append((n, original)))
    configs = []
    for i in range(12):
        config = searcher.suggest(f"t{i}")
        if config == Searcher.FINISHED:
            break
        configs.append(config)
        searcher.on_trial_complete(f"t{i}", _result(config["params"]))
    keys = [_key(SPACE, c["params"]) for c in configs]
    assert len(configs) == 7 and len(set(keys)) == 7  # 6 dropouts + full (knob-less: one configuration)
    assert sum(c["params"]["family"] == "full" for c in configs) == 1
    assert searcher.finished_early
    assert repeats, "the random sampler repeats itself on 7 configurations; those repeats were not handed out"
    trials = {t.number: t for t in searcher.study.get_trials()}
    ran = {c["trial_number"] for c in configs}
    for number, original in repeats:
        t = trials[number]
        assert number not in ran and t.user_attrs["duplicate_of"] == original
        assert t.state == optuna.trial.TrialState.COMPLETE and t.values == trials[original].values
        assert _key(SPACE, t.params) == _key(SPACE, trials[original].params)


def test_the_last_untried_configuration_is_found_when_draws_miss_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finite space nearly all tried: random draws rarely hit what is left, so the grid is walked; the search ends
    only when nothing is left, not when 200 draws missed."""
    import autoside.tune.dedup as dedup

    monkeypatch.setattr(dedup, "RANDOM_DRAWS", 0)  # every draw misses
    searcher = _searcher(tmp_path)
    grid = list(searcher.autoside_space.grid())
    assert len(grid) == searcher.autoside_space.size() == 7
    assert len({_key(SPACE, p) for p in grid}) == 7  # one entry per configuration
    for number, params in enumerate(grid[:-1]):
        searcher.ledger.seen[_key(SPACE, params)] = number
    assert _key(SPACE, searcher.ledger.fresh()) == _key(SPACE, grid[-1])
    searcher.ledger.seen[_key(SPACE, grid[-1])] = 6
    assert searcher.ledger.fresh() is None and searcher.ledger.exhausted()


def test_a_repeat_of_a_running_trial_waits_for_its_outcome(tmp_path: Path) -> None:
    space = {"name": "two", "families": {"full": {}, "linear": {}}}
    searcher = _searcher(tmp_path, space)
    first = searcher.suggest("t0")
    second = searcher.suggest("t1")
    assert _key(space, first["params"]) != _key(space, second["params"])
    assert searcher.suggest("t2") is None  # both configurations are out (running): not finished, wait for them
    assert not searcher.finished_early
    parked = [t for t in searcher.study.get_trials() if "duplicate_of" in t.user_attrs]
    searcher.on_trial_complete("t0", _result(first["params"]))
    searcher.on_trial_complete("t1", {**_result(second["params"]), "val_accuracy": 0.1})
    assert searcher.suggest("t3") == Searcher.FINISHED and searcher.finished_early
    by_number = {t.number: t for t in searcher.study.get_trials()}
    for t in parked:
        assert by_number[t.number].values == by_number[t.user_attrs["duplicate_of"]].values
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in by_number.values())


def test_a_configuration_freed_by_a_crash_runs_again_before_the_search_ends(tmp_path: Path) -> None:
    """Every configuration tried or running: the search waits instead of ending, and a running trial whose worker
    crashed frees its configuration, which is handed out again."""
    space = {"name": "two", "families": {"full": {}, "linear": {}}}
    searcher = _searcher(tmp_path, space)
    first, second = searcher.suggest("t0"), searcher.suggest("t1")
    assert searcher.suggest("t2") is None
    searcher.on_trial_complete("t0", _result(first["params"]))
    searcher.on_trial_complete("t1", error=True)  # its worker crashed: failed, not tried
    again = searcher.suggest("t3")
    assert isinstance(again, dict) and _key(space, again["params"]) == _key(space, second["params"])
    searcher.on_trial_complete("t3", _result(again["params"]))
    assert searcher.suggest("t4") == Searcher.FINISHED


@pytest.mark.parametrize("sampler", ["random", "tpe", "nsga2", "gp", "family-gp"])
def test_resume_does_not_re_propose(tmp_path: Path, sampler: str) -> None:
    """A resumed driver (same seed) is seeded from the trials already told: its proposals are new, not a replay of
    the first run's (on a continuous knob, any repeat is a replay), and none of them runs twice."""
    from autoside.tune.api import SearchOptions
    from autoside.tune.driver import DriverState, _searcher

    space = space_from_dict(
        {"name": "c", "families": {"linear": {"dropout": {"type": "float", "low": 0.0, "high": 0.9}}}}
    )
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}")
    opts = SearchOptions(sampler=sampler, num_samples=8, seed=0)
    state = DriverState(
        tmp_path, {"budget_bytes": None}, space, None, opts, study_name="s", storage=storage, context=None
    )

    def run(prefix: str, n: int) -> list[float]:
        searcher = _searcher(state, pending=[])
        out = []
        for i in range(n):
            config = searcher.suggest(f"{prefix}{i}")
            out.append(config["params"]["linear/dropout"])
            searcher.on_trial_complete(f"{prefix}{i}", _result(config["params"]))
        return out

    first = run("a", 4)
    told = len(optuna.load_study(study_name="s", storage=storage).get_trials())
    second = run("b", 4)  # the restart: a fresh searcher and sampler on the same study
    assert not set(second) & set(first)
    replayed = [
        t
        for t in optuna.load_study(study_name="s", storage=storage).get_trials()
        if t.number >= told and t.user_attrs.get("duplicate_of", told) < told
    ]
    assert not replayed, "the resumed sampler proposed the first run's configurations again"


def test_a_repeat_left_unmarked_by_a_killed_driver_is_not_trained(tmp_path: Path) -> None:
    """The driver died after asking a proposal but before finding it a repeat: on resume it comes back as a running
    trial, and is told the earlier outcome instead of being handed to Ray."""
    first = _searcher(tmp_path)
    study = first.study
    study.enqueue_trial({"family": "full"})
    config = first.suggest("t0")
    first.on_trial_complete("t0", _result(config["params"]))
    study.enqueue_trial({"family": "full"})
    # What the killed driver left: a running trial with a tried configuration and no mark.
    unmarked = study.ask({"family": optuna.distributions.CategoricalDistribution(["linear", "full"])})
    assert unmarked.params == {"family": "full"}

    pending = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    resumed = _searcher(tmp_path, pending=pending)
    handed = resumed.suggest("t1")
    assert handed["params"]["family"] == "linear"  # the repeat was not handed out; a new configuration was
    frozen = study.trials[unmarked.number]
    assert frozen.state == optuna.trial.TrialState.COMPLETE and frozen.user_attrs["duplicate_of"] == 0


def test_knobs_that_shape_nothing_make_no_new_configuration() -> None:
    """The shipped video, CST and LoSA spaces search knobs that only matter with another choice (a conv kernel with
    no conv, the temporal mixer's rank with joint mixing, a distillation temperature with no distillation, the pruning
    ratio of a stage that is not copied, the mixing order with one kind of mixing): settings that differ only there
    are one configuration, others are not."""
    from autoside.errors import ConfigError
    from autoside.sidenets import resolve
    from autoside.tune.space import load_space

    spaces = Path(__file__).resolve().parents[2] / "search_spaces"
    video, cst = load_space(spaces / "video.yaml"), load_space(spaces / "cst.yaml")

    def key(space, family: str, **knobs) -> str:  # noqa: ANN001
        return config_key(
            space.config_from_params({"family": family, **{f"{family}/{k}": v for k, v in knobs.items()}}).to_dict()
        )

    s4v = {
        "side_width": 64,
        "layer_set": "all",
        "temporal_kernel": 3,
        "temporal_spatial_kernel": 1,
        "shift_fraction": 0.25,
        "cls_shift": True,
        "frames": 4,
        "dropout": 0.0,
    }
    for temporal in ("none", "attn"):
        assert key(video, "side4video", **{**s4v, "temporal": temporal}) == key(
            video,
            "side4video",
            **{**s4v, "temporal": temporal, "temporal_kernel": 7, "temporal_spatial_kernel": 3, "shift_fraction": 0.5},
        )
    assert key(video, "side4video", **{**s4v, "temporal": "shift"}) == key(
        video, "side4video", **{**s4v, "temporal": "shift", "temporal_kernel": 5}
    )
    assert key(video, "side4video", **{**s4v, "temporal": "shift"}) != key(
        video, "side4video", **{**s4v, "temporal": "shift", "shift_fraction": 0.5}
    )
    assert key(video, "side4video", **{**s4v, "temporal": "conv"}) != key(
        video, "side4video", **{**s4v, "temporal": "conv", "temporal_kernel": 5}
    )

    lv = {"channel_rank": 8, "token_rank": 4, "temporal": "none", "frames": 4, "layer_stride": 1}
    assert key(video, "losa_video", **lv, token_mixing="joint", temporal_rank=1) == key(
        video, "losa_video", **lv, token_mixing="joint", temporal_rank=3
    )
    assert key(video, "losa_video", **lv, token_mixing="factorised", temporal_rank=1) != key(
        video, "losa_video", **lv, token_mixing="factorised", temporal_rank=3
    )

    c = {
        "first_stage": 2,
        "gate": "mtc",
        "writes_back": True,
        "importance": "magnitude",
        "drop_blocks": 0,
        "init": "copy",
        "lambda_feat": 0.0,
        "lambda_kd": 0.0,
        "temperature": 2.0,
        "distill_epochs": 0,
        "dropout": 0.0,
        "stage_prune_ratios/0": 0.0,
        "stage_prune_ratios/1": 0.0,
        "stage_prune_ratios/2": 0.5,
        "stage_prune_ratios/3": 0.5,
    }
    assert key(cst, "cst", **c) == key(
        cst,
        "cst",
        **{**c, "temperature": 6.0, "distill_epochs": 2, "stage_prune_ratios/0": 0.75, "stage_prune_ratios/1": 0.25},
    )
    assert key(cst, "cst", **{**c, "lambda_kd": 1.0}) != key(cst, "cst", **{**c, "lambda_kd": 1.0, "temperature": 6.0})
    assert key(cst, "cst", **c) != key(cst, "cst", **{**c, "stage_prune_ratios/2": 0.25})
    losa = load_space(spaces / "losa.yaml")
    knobs = {
        "channel_rank": 8,
        "token_rank": 4,
        "mixer_depth": 1,
        "mixer_order": "token_first",
        "layer_stride": 1,
        "update": "refine",
        "pool": "cls",
        "dropout": 0.0,
    }
    assert key(losa, "losa", **knobs, mixer_components="channel") == key(
        losa, "losa", **{**knobs, "token_rank": 16, "mixer_order": "channel_first"}, mixer_components="channel"
    )
    assert key(losa, "losa", **knobs, mixer_components="token") == key(
        losa, "losa", **{**knobs, "channel_rank": 32}, mixer_components="token"
    )
    assert key(losa, "losa", **knobs, mixer_components="both") != key(
        losa, "losa", **{**knobs, "mixer_order": "channel_first"}, mixer_components="both"
    )
    # An unused knob still has to be valid: a bad value is reported, not reset.
    with pytest.raises(ConfigError, match=r"^sidenet\.temporal_kernel: "):
        resolve("side4video", temporal="none", temporal_kernel=4)
