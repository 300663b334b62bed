"""Each configuration is trained once per search.

Two proposals are the same configuration when they replay to the same side config (:func:`config_key`): a
knob-less family such as ``full`` is one configuration, ints compare as ints and floats at 10 significant digits,
which absorbs the rounding of stepped floats (``0.30000000000000004`` is ``0.3``), and a knob that shapes nothing
with the other choices is already at its default in the config (``SideConfig._unused``).

When the sampler proposes a configuration the search already ran (or is running), the proposal is not trained. Its
Optuna trial is marked ``duplicate_of`` and told the earlier trial's outcome under its own number (values and
constraint, COMPLETE or PRUNED; once the earlier trial finishes, if it is still running), so the sampler learns
nothing false, and the sampler is asked again. After :data:`REASKS` repeats in a row, an unseen configuration drawn
at random (or, when draws keep hitting tried ones, the first untried one of a finite space's grid) is enqueued
instead; when none is left (a finite space fully tried) the search ends early. A trial whose
worker crashed (``failed``) does not count as tried: its configuration may run again.
"""

from __future__ import annotations

import json
from typing import Any

REASKS = 10
RANDOM_DRAWS = 200
GRID_WALK_MAX = 100_000  # a finite space up to this size is walked for its last untried configurations
TRIED = ("ok", "infeasible", "pruned")


def canonical_float(value: float) -> float:
    """A float at 10 significant digits: rounding noise (0.30000000000000004) does not make a new choice."""
    return float(f"{value:.10g}")


def _canonical(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return canonical_float(value)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return str(value)


def config_key(config: dict[str, Any]) -> str:
    """A side config (``SideConfig.to_dict()``) as a canonical string: equal strings, equal architectures."""
    return json.dumps(_canonical(config), sort_keys=True)


def params_key(space: Any, params: dict[str, Any]) -> str | None:
    """A trial's parameters as the key of the side config they build; ``None`` for parameters that build none (a
    trial killed while being sampled has partial parameters)."""
    from autoside.errors import ConfigError

    try:
        return config_key(space.config_from_params(params).to_dict())
    except (ConfigError, ValueError, KeyError):
        return None


class Ledger:
    """The configurations a search has tried, rebuilt from its Optuna study (so it survives a resume)."""

    def __init__(self, study: Any, space: Any, *, seed: int | None = None) -> None:
        import optuna

        self.study, self.space = study, space
        self.size = space.size()
        self.seen: dict[str, int] = {}
        self.waiting: dict[int, list[Any]] = {}
        self._explorer = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        finished: list[int] = []
        for t in study.get_trials(deepcopy=False):
            original = t.user_attrs.get("duplicate_of")
            if original is not None:
                if t.state == optuna.trial.TrialState.RUNNING:
                    self.waiting.setdefault(int(original), []).append(optuna.trial.Trial(study, t._trial_id))
                    finished.append(int(original))
                continue
            if t.state == optuna.trial.TrialState.RUNNING or t.user_attrs.get("autoside_status") in TRIED:
                self.add(t.number, t.params)
        for number in finished:  # a driver that died before telling them: the earlier trial may have finished since
            if self._frozen(number).state != optuna.trial.TrialState.RUNNING:
                self.resolve(number)

    def key(self, params: dict[str, Any]) -> str | None:
        return params_key(self.space, params)

    def add(self, number: int, params: dict[str, Any]) -> None:
        """Count a configuration the study already holds (a finished trial, or one running when the driver died)."""
        key = self.key(params)
        if key is not None:
            self.seen.setdefault(key, number)

    def exhausted(self) -> bool:
        return self.size is not None and len(self.seen) >= self.size

    def check(self, ot_trial: Any, params: dict[str, Any]) -> int | None:
        """``None`` for a new configuration (now counted as tried); else the number of the trial it repeats, after
        telling the proposal that trial's outcome (or parking it until that trial finishes)."""
        import optuna

        key = self.key(params)
        original = self.seen.get(key)
        if original is None or original == ot_trial.number:  # new, or a trial handed out again after a restart
            self.seen[key] = ot_trial.number
            return None
        ot_trial.set_user_attr("duplicate_of", original)
        ot_trial.set_user_attr("autoside_status", "duplicate")
        frozen = self._frozen(original)
        if frozen.state == optuna.trial.TrialState.RUNNING:
            self.waiting.setdefault(original, []).append(ot_trial)
        else:
            self._tell_copy(ot_trial, frozen)
        return original

    def resolve(self, number: int) -> None:
        """The trial ``number`` was told: tell the proposals that repeated it the same outcome."""
        import optuna

        frozen = self._frozen(number)
        if frozen.state == optuna.trial.TrialState.FAIL:
            self.seen = {k: n for k, n in self.seen.items() if n != number}
        for ot_trial in self.waiting.pop(number, []):
            self._tell_copy(ot_trial, frozen)

    def fresh(self) -> dict[str, Any] | None:
        """Parameters of a configuration not tried yet: drawn at random, else (a finite space nearly all tried,
        where random draws keep hitting tried ones) the first untried one of its grid; ``None`` when none is left."""
        from autoside.errors import ConfigError

        for _ in range(RANDOM_DRAWS):
            trial = self._explorer.ask()
            try:
                self.space.suggest(trial)
            except ConfigError:
                continue
            if self.key(trial.params) not in self.seen:
                return dict(trial.params)
        if self.size is None or self.size > GRID_WALK_MAX:
            return None
        for params in self.space.grid():
            key = self.key(params)
            if key is not None and key not in self.seen:
                return params
        return None

    def _frozen(self, number: int) -> Any:
        storage = self.study._storage
        return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number))

    def _tell_copy(self, ot_trial: Any, frozen: Any) -> None:
        import optuna

        for name, value in (frozen.constraints or {}).items():
            ot_trial.set_constraint(name, value)
        state = optuna.trial.TrialState
        if frozen.state == state.COMPLETE:
            self.study.tell(ot_trial, frozen.values, skip_if_finished=True)
        else:
            self.study.tell(ot_trial, state=state.PRUNED if frozen.state == state.PRUNED else state.FAIL)
