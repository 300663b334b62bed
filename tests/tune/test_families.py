"""The default sampler of small searches: a GP per family on that family's own trials, a bandit over families."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autoside.tune.dedup import config_key
from autoside.tune.families import FamilyGPSampler
from autoside.tune.sampler import AutosideOptunaSearch, make_sampler
from autoside.tune.space import load_space, space_from_dict

ROOT = Path(__file__).resolve().parents[2]
SPACE = space_from_dict(
    {
        "families": {
            "linear": {"dropout": {"type": "float", "low": 0.0, "high": 0.9, "step": 0.1}},
            "dtl": {"rank": {"type": "int", "low": 1, "high": 16}, "merge_from": 6},
        }
    }
)
DIRECTIONS = ["maximize", "minimize"]


def add(study: optuna.Study, family: str, knobs: dict, values: list[float] | None, *, memory_excess: float = -1.0):
    """A finished (``values``) or running (``None``) trial of ``family`` with ``knobs`` and a memory constraint."""
    fam = next(f for f in SPACE.families if f.family == family)
    dists = {"family": optuna.distributions.CategoricalDistribution(SPACE.family_names)}
    dists.update({f"{family}/{p.name}": p.distribution() for p in fam.params})
    params = {"family": family, **{f"{family}/{k}": v for k, v in knobs.items()}}
    if values is None:
        study.add_trial(optuna.trial.create_trial(state=TrialState.RUNNING, params=params, distributions=dists))
    else:
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=dists, values=values, constraints={"memory": memory_excess}
            )
        )


def ask(sampler: FamilyGPSampler, study: optuna.Study) -> dict:
    trial = study.ask()
    SPACE.suggest(trial)
    return trial.params


@pytest.mark.parametrize("better", ["low", "high"])
def test_a_familys_knobs_follow_its_own_results(better: str) -> None:
    """Same parameters tried, opposite results: the family's GP moves its proposal to the better end, so the knob is
    modelled (a sampler that draws it independently of the results would propose the same value both times)."""
    sampler = FamilyGPSampler(SPACE, seed=0, exploration=0.0)
    study = optuna.create_study(directions=DIRECTIONS, sampler=sampler)
    for rank in (1, 4, 8, 12, 16):
        acc = rank / 16 if better == "high" else 1 - rank / 16
        add(study, "dtl", {"rank": rank}, [acc, 100.0])
    add(study, "linear", {"dropout": 0.0}, [0.01, 100.0])
    add(study, "linear", {"dropout": 0.5}, [0.01, 100.0])
    assert ask(sampler, study)["family"] == "dtl"  # the better front; linear's two points are worthless
    dists = {"dtl/rank": SPACE.families[1].params[0].distribution()}
    trials = [t for t in study.get_trials() if t.params["family"] == "dtl" and t.state == TrialState.COMPLETE]
    rank = sampler.family_study(study, trials, dists).ask(fixed_distributions=dists).params["dtl/rank"]
    assert rank >= 13 if better == "high" else rank <= 3, rank


def test_the_sub_study_holds_the_familys_trials_with_their_constraint_and_running_ones_pending() -> None:
    sampler = FamilyGPSampler(SPACE, seed=0)
    study = optuna.create_study(directions=DIRECTIONS, sampler=sampler)
    add(study, "dtl", {"rank": 2}, [0.5, 10.0])
    add(study, "dtl", {"rank": 9}, [0.0, 30.0], memory_excess=5.0)  # infeasible: over the budget
    add(study, "linear", {"dropout": 0.3}, [0.4, 1.0])
    add(study, "dtl", {"rank": 5}, None)  # running on another worker
    dists = {"dtl/rank": SPACE.families[1].params[0].distribution()}
    trials = [t for t in study.get_trials() if t.params["family"] == "dtl"]
    sub = sampler.family_study(study, trials, dists)
    rows = [(t.state, t.params, t.values, t.constraints) for t in sub.get_trials()]
    assert rows == [
        (TrialState.COMPLETE, {"dtl/rank": 2}, [0.5, 10.0], {"memory": -1.0}),
        (TrialState.COMPLETE, {"dtl/rank": 9}, [0.0, 30.0], {"memory": 5.0}),
        (TrialState.RUNNING, {"dtl/rank": 5}, None, {}),
    ]


def test_the_bandit_takes_the_better_front_skips_exhausted_families_and_counts_running_trials() -> None:
    small = space_from_dict(
        {
            "families": {
                "linear": {"dropout": {"type": "float", "low": 0.0, "high": 0.1, "step": 0.1}},  # two configurations
                "dtl": {"rank": {"type": "int", "low": 1, "high": 16}, "merge_from": 6},
            }
        }
    )
    sampler = FamilyGPSampler(small, seed=0, exploration=0.0)
    study = optuna.create_study(directions=DIRECTIONS, sampler=sampler)
    add(study, "linear", {"dropout": 0.0}, [0.9, 1.0])
    add(study, "dtl", {"rank": 3}, [0.5, 50.0])
    add(study, "dtl", {"rank": 4}, None)  # running: dtl is past its start-up trials, linear is not
    assert sampler.pick_family(study, number=99) == "linear"
    add(study, "linear", {"dropout": 6.938893903907228e-18}, [0.9, 1.0])  # a GP's 0.0, told as a repeat
    scores = sampler.family_scores(study, {"linear": study.get_trials()[:1], "dtl": study.get_trials()[1:2]})
    assert scores["linear"] > scores["dtl"] > 0
    assert sampler.pick_family(study, number=99) == "linear"  # one of its two configurations is still untried
    add(study, "linear", {"dropout": 0.1}, [0.9, 1.0])
    # linear's front is still the better one, but both of its configurations are tried
    assert sampler.pick_family(study, number=99) == "dtl"


def test_a_demo_search_walks_only_the_chosen_family_and_a_resume_continues(tmp_path: Path) -> None:
    """Through the search's own searcher (dedup, constraint, tell) on the demo space with a made-up objective; then a
    second driver on the same storage, as ``--resume`` builds it, keeps every family's history."""
    space = load_space(ROOT / "search_spaces" / "demo.yaml")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}")
    seen = set()

    def run(n: int, told: int) -> None:
        searcher = AutosideOptunaSearch(
            space,
            objectives=("accuracy", "memory"),
            sampler=make_sampler("auto", seed=0, num_samples=24, space=space, told=told),
            storage=storage,
            study_name="s",
            budget_bytes=100,
        )
        for i in range(n):
            params = searcher.suggest(f"{told}-{i}")["params"]
            assert {k.split("/")[0] for k in params} == {"family", params["family"]}
            config = space.config_from_params(params)
            key = config_key(config.to_dict())
            assert key not in seen  # each configuration trained once, across the restart too
            seen.add(key)
            memory = {"linear": 5, "losa": 40, "dtl": 90}[config.family] + len(seen)
            searcher.on_trial_complete(
                f"{told}-{i}",
                {"autoside_status": "ok", "val_accuracy": 0.5 + 0.01 * len(seen), "peak_memory_bytes": memory},
            )

    run(8, 0)
    run(6, len(optuna.load_study(study_name="s", storage=storage).trials))  # the driver seeds a resume so
    study = optuna.load_study(study_name="s", storage=storage)
    families = [t.params["family"] for t in study.trials if t.state == TrialState.COMPLETE]
    assert {f: families.count(f) >= 2 for f in space.family_names} == dict.fromkeys(space.family_names, True)
    assert len(seen) == 14


@pytest.mark.parametrize("probe_above", [5000, 5])
def test_a_proposal_the_family_already_tried_is_replaced_by_an_untried_one(
    probe_above: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nine of linear's ten dropouts tried, the best at 0.0: the family's GP returns to its best point, a repeat that
    would be told, not trained; the sampler hands out the one untried configuration instead (from the list of
    untried settings, or, on a family larger than ``PROBE_ABOVE``, by random probes of its grid)."""
    from autoside.tune import families

    monkeypatch.setattr(families, "PROBE_ABOVE", probe_above)
    sampler = FamilyGPSampler(SPACE, seed=0)
    study = optuna.create_study(directions=DIRECTIONS, sampler=sampler)
    for i in range(9):
        add(study, "linear", {"dropout": i / 10}, [0.9 - 0.08 * i, 1.0])
    assert sampler.propose_knobs(study, 99, "linear") == {"linear/dropout": 0.9}


def test_settings_that_build_one_network_are_one_configuration_to_the_sampler() -> None:
    """Joint token mixing has no temporal mixer, so its rank shapes nothing: four rank settings of one channel rank
    are one configuration. With channel rank 4 tried, the repeat the GP proposes is replaced by channel rank 8 (not by
    another rank of channel rank 4), and once both channel ranks are tried the family counts as exhausted."""
    space = space_from_dict(
        {
            "families": {
                "linear": {"dropout": {"type": "float", "low": 0.0, "high": 0.9, "step": 0.1}},
                "losa_video": {
                    "channel_rank": {"type": "categorical", "choices": [4, 8]},
                    "temporal_rank": {"type": "int", "low": 1, "high": 4},
                    "token_mixing": "joint",
                },
            }
        }
    )
    sampler = FamilyGPSampler(space, seed=0, gp_startup=3)
    study = optuna.create_study(directions=DIRECTIONS, sampler=sampler)
    fam = space.families[1]
    dists = {"family": optuna.distributions.CategoricalDistribution(space.family_names)}
    dists.update({f"losa_video/{p.name}": p.distribution() for p in fam.params})

    def tried(channel_rank: int, temporal_rank: int, acc: float) -> None:
        params = {
            "family": "losa_video",
            "losa_video/channel_rank": channel_rank,
            "losa_video/temporal_rank": temporal_rank,
        }
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=dists, values=[acc, 5.0], constraints={"memory": -1.0}
            )
        )

    for rank, acc in ((1, 0.6), (2, 0.7), (3, 0.8)):
        tried(4, rank, acc)
    trials = study.get_trials()
    assert len(sampler._tried(trials)) == 1 and not sampler._exhausted("losa_video", trials)
    for _ in range(5):
        assert sampler.propose_knobs(study, 99, "losa_video")["losa_video/channel_rank"] == 8
    tried(8, 4, 0.5)
    assert sampler._exhausted("losa_video", study.get_trials())
