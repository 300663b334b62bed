"""Samplers that model only the parameters every trial shares (GP, NSGA-II) see every knob of a multi-family space:
the space is walked flat for them, the configuration still comes from the chosen family's knobs alone."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from autoside.tune.sampler import AutosideOptunaSearch, make_sampler
from autoside.tune.space import load_space

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["gp", "nsga2"])
def test_every_family_knob_is_modelled(tmp_path: Path, name: str) -> None:
    space = load_space(ROOT / "search_spaces" / "demo.yaml")
    sampler = make_sampler(name, seed=0, num_samples=12, space=space)
    searcher = AutosideOptunaSearch(
        space,
        objectives=("accuracy", "memory"),
        sampler=sampler,
        storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}"),
        study_name="s",
        budget_bytes=None,
    )
    families = set()
    for i in range(6):
        config = searcher.suggest(f"t{i}")
        params = config["params"]
        families.add(params["family"])
        # What runs (and is recorded) is the chosen family's configuration, nothing else.
        assert {k.split("/")[0] for k in params if k != "family"} <= {params["family"]}
        assert space.config_from_params(params).family == params["family"]
        searcher.on_trial_complete(f"t{i}", {"autoside_status": "ok", "val_accuracy": 0.1 * i, "peak_memory_bytes": i})
    assert len(families) > 1
    study = searcher.study
    modelled = set(sampler.infer_relative_search_space(study, study.trials[-1]))
    knobs = {f"{fam.family}/{p.name}" for fam in space.families for p in fam.params}
    assert modelled >= knobs | {"family"}, f"sampled independently: {sorted(knobs - modelled)}"


def test_auto_is_a_gp_per_family_for_small_searches_and_tpe_for_large() -> None:
    from autoside.errors import ConfigError
    from autoside.tune.families import FamilyGPSampler
    from autoside.tune.sampler import AUTO_GP_MAX_TRIALS, resolve_sampler

    space = load_space(ROOT / "search_spaces" / "demo.yaml")
    assert resolve_sampler("auto", 24) == "family-gp"
    assert resolve_sampler("auto", AUTO_GP_MAX_TRIALS) == "family-gp"
    assert resolve_sampler("auto", AUTO_GP_MAX_TRIALS + 1) == "tpe"
    assert resolve_sampler("random", 24) == "random"  # an explicit choice is kept
    assert isinstance(make_sampler("auto", seed=0, num_samples=24, space=space), FamilyGPSampler)
    assert isinstance(make_sampler("auto", seed=0, num_samples=500, space=space), optuna.samplers.TPESampler)
    with pytest.raises(ConfigError, match="--sampler: 'cmaes' is not one of auto, family-gp, tpe"):
        resolve_sampler("cmaes", 24)


def test_the_sampler_asks_on_one_torch_thread_and_restores_the_callers() -> None:
    """Optuna's GP runs in torch in the driver beside trials that hold every core: a torch thread pool as wide as the
    machine oversubscribes it, so proposals are computed on one thread and the caller's setting comes back after."""
    import torch

    seen: list[int] = []

    class Watching(optuna.samplers.RandomSampler):
        def sample_independent(self, study, trial, name, distribution):  # noqa: ANN001, ANN201
            seen.append(torch.get_num_threads())
            return super().sample_independent(study, trial, name, distribution)

    searcher = AutosideOptunaSearch(
        load_space(ROOT / "search_spaces" / "demo.yaml"),
        objectives=("accuracy", "memory"),
        sampler=Watching(seed=0),
        storage=optuna.storages.InMemoryStorage(),
        study_name="s",
        budget_bytes=None,
    )
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        assert searcher.suggest("t0")["params"]["family"]
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
