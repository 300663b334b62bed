"""A Gaussian process per family and a bandit over the families: the default sampler of small multi-family searches.

One GP over a flat multi-family space (every family's knobs on every trial) lets one family's knobs crowd out the
others: on the demo space Optuna's GP spent 14 of 24 trials of one seed on DTL (accurate, but at 70-85 % of the
budget) and found the cheap LoSA region once. Here each trial first picks a family, then that family's knobs:

* **Family**: each family gets ``family_startup`` trials first (in random order); then the family with the highest
  upper confidence bound, the hypervolume of the family's own feasible front (objectives normalised as in
  :mod:`autoside.tune.pareto`, a minimised objective by 1.1 x its largest feasible value in the study) plus
  ``exploration x sqrt(ln n / n_f)`` (UCB1, ``n_f`` the family's trials, ``n`` all). A family whose every
  configuration has been tried is skipped. Running trials count, so parallel workers spread over the families.
* **Knobs**: an in-memory sub-study holds the family's finished trials of the search (their values and their memory
  constraint, so infeasible ones still teach where the wall is) and its running trials (as pending points); Optuna's
  GP proposes the next point in that family's own space; when that point was tried already, an untried configuration
  of the family is drawn instead (a GP on a small family keeps returning to its best point, and each repeat would be
  told, not trained, and asked again). Until a family has ``gp_startup`` finished trials its knobs are drawn at random.

Everything is rebuilt from the search's Optuna study on each ask, so a resumed search continues with what it knew.
On the demo space, hypervolume after 24 trials, ten seeds: see ``benchmarks/README.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from autoside.tune.dedup import GRID_WALK_MAX, params_key
from autoside.tune.pareto import hypervolume
from autoside.tune.space import SearchSpace

PROBE_ABOVE, PROBES = 5000, 200  # families with more settings draw an untried one by up to PROBES random probes


class FamilyGPSampler(optuna.samplers.BaseSampler):
    """See the module docstring. Walk the space conditionally (not flat): only the chosen family's knobs are asked."""

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int | None = None,
        family_startup: int = 2,
        gp_startup: int = 3,
        exploration: float = 0.25,
    ) -> None:
        self.space = space
        self.family_startup = max(1, family_startup)  # UCB needs every open family tried once
        self.gp_startup = gp_startup
        self.exploration = exploration
        self._rng = np.random.default_rng(seed)
        self._random = optuna.samplers.RandomSampler(seed=int(self._rng.integers(2**31)))
        self._families = {f.family: f for f in space.families}
        self._sizes = {f.family: f.size() for f in space.families}
        self._proposal: tuple[int, dict[str, Any] | None] | None = None  # (trial number, knobs proposed for it)
        self._keys: dict[tuple, str | None] = {}  # a family's knob settings -> the config they build (see _key)

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if param_name == "family":
            return self.pick_family(study, trial.number)
        family = param_name.split("/", 1)[0]
        if self._proposal is None or self._proposal[0] != trial.number:
            self._proposal = (trial.number, self.propose_knobs(study, trial.number, family))
        knobs = self._proposal[1]
        if knobs is None or param_name not in knobs:
            return self._random.sample_independent(study, trial, param_name, param_distribution)
        return knobs[param_name]

    # -- the family --------------------------------------------------------------------------------------------------
    def pick_family(self, study: optuna.Study, number: int) -> str:
        """The family of trial ``number`` (the trials of the study other than it decide)."""
        by_family = _trials_by_family(study, exclude=number)
        counts = {f: len(by_family.get(f, [])) for f in self._sizes}
        open_ = [f for f in self._sizes if not self._exhausted(f, by_family.get(f, []))] or list(self._sizes)
        starting = [f for f in open_ if counts[f] < self.family_startup]
        if starting:
            return starting[int(self._rng.integers(len(starting)))]
        scores = self.family_scores(study, by_family)
        total = sum(counts.values())
        ucb = {f: scores[f] + self.exploration * math.sqrt(math.log(total) / counts[f]) for f in open_}
        return max(open_, key=lambda f: ucb[f])

    def family_scores(self, study: optuna.Study, by_family: dict[str, list[FrozenTrial]]) -> dict[str, float]:
        """Normalised hypervolume of each family's own feasible front (0 for a family with none)."""
        senses = ["max" if d == StudyDirection.MAXIMIZE else "min" for d in study.directions]
        feasible = {f: [t.values for t in ts if _feasible(t)] for f, ts in by_family.items()}
        everything = [v for vs in feasible.values() for v in vs]
        refs = [
            0.0 if sense == "max" else 1.1 * max((abs(v[i]) for v in everything), default=1.0) or 1.0
            for i, sense in enumerate(senses)
        ]
        reference = [0.0 if sense == "max" else 1.0 for sense in senses]
        out = {}
        for family in self._sizes:
            points = [
                [x if s == "max" else x / r for x, s, r in zip(v, senses, refs)] for v in feasible.get(family, [])
            ]
            out[family] = hypervolume(points, senses, reference)
        return out

    def _exhausted(self, family: str, trials: Sequence[FrozenTrial]) -> bool:
        """Every configuration of the family tried: as many as its knob settings, or, where settings collapse into
        one configuration (a knob that shapes nothing with the others), none left untried on its grid."""
        size = self._sizes[family]
        if size is None:
            return False
        tried = self._tried(trials)
        if len(tried) >= size:
            return True
        fam = self._families[family]
        return size <= GRID_WALK_MAX and all(self._key(p) in tried for p in fam.grid())

    def _tried(self, trials: Sequence[FrozenTrial]) -> set[str]:
        return {key for t in trials if (key := self._key(self.space.active(t.params))) is not None}

    def _key(self, params: dict[str, Any]) -> str | None:
        """One family's knob settings as the side config they build, as the search's de-duplication keys it: a
        GP's 6.9e-18 is the 0.0 tried before, and settings that differ only in knobs shaping nothing are one
        configuration. Cached: the grid walk below asks for every setting of a family."""
        knobs = tuple(sorted(params.items()))
        if knobs not in self._keys:
            self._keys[knobs] = params_key(self.space, params)
        return self._keys[knobs]

    # -- the family's knobs ------------------------------------------------------------------------------------------
    def propose_knobs(self, study: optuna.Study, number: int, family: str) -> dict[str, Any] | None:
        """The family's knobs from a GP fitted to its own trials; ``None`` (random) until it has enough of them."""
        fam = self._families[family]
        if not fam.params:
            return None
        distributions = {f"{family}/{p.name}": p.distribution() for p in fam.params}
        trials = _trials_by_family(study, exclude=number).get(family, [])
        finished = [t for t in trials if t.state == TrialState.COMPLETE]
        if len(finished) < self.gp_startup:
            return None
        sub = self.family_study(study, trials, distributions)
        proposal = dict(sub.ask(fixed_distributions=distributions).params)
        tried, size = self._tried(trials), self._sizes[family]
        if self._key({"family": family, **proposal}) not in tried or size is None or size > GRID_WALK_MAX:
            return proposal
        grid = list(fam.grid())  # a uniform draw among the untried settings:
        if len(grid) > PROBE_ABOVE:  # by rejection (keying all 40k settings of a family stalls the driver ~30 s)
            for _ in range(PROBES):
                pick = grid[int(self._rng.integers(len(grid)))]
                if self._key(pick) not in tried:
                    return {k: v for k, v in pick.items() if k != "family"}
        untried = [p for p in grid if self._key(p) not in tried]
        if not untried:
            return proposal
        return {k: v for k, v in untried[int(self._rng.integers(len(untried)))].items() if k != "family"}

    def family_study(
        self, study: optuna.Study, trials: Sequence[FrozenTrial], distributions: dict[str, BaseDistribution]
    ) -> optuna.Study:
        """An in-memory study of one family's trials: finished ones with their values and memory constraint,
        running ones (with all of the family's knobs sampled) as pending points."""
        sampler = optuna.samplers.GPSampler(seed=int(self._rng.integers(2**31)), n_startup_trials=self.gp_startup)
        sub = optuna.create_study(directions=study.directions, sampler=sampler)
        for t in trials:
            if not distributions.keys() <= t.params.keys():
                continue
            params = {k: t.params[k] for k in distributions}
            if t.state == TrialState.COMPLETE:
                sub.add_trial(
                    optuna.trial.create_trial(
                        params=params, distributions=distributions, values=t.values, constraints=t.constraints
                    )
                )
            elif t.state == TrialState.RUNNING:
                sub.add_trial(
                    optuna.trial.create_trial(state=TrialState.RUNNING, params=params, distributions=distributions)
                )
        return sub


def _trials_by_family(study: optuna.Study, *, exclude: int) -> dict[str, list[FrozenTrial]]:
    """The study's finished and running trials, by family (failed ones are not results, pruned ones are kept for
    the counts but give the GP nothing)."""
    out: dict[str, list[FrozenTrial]] = {}
    states = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.PRUNED)
    for t in study.get_trials(deepcopy=False, states=states):
        if t.number != exclude and "family" in t.params:
            out.setdefault(t.params["family"], []).append(t)
    return out


def _feasible(t: FrozenTrial) -> bool:
    if t.state != TrialState.COMPLETE or t.values is None:
        return False
    return all(v <= 0 for v in t.constraints.values())
