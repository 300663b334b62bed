"""Ray Tune's ``OptunaSearch``, extended to tell Optuna the truth about each trial.

Ray's own integration falls short for autoside in these ways, each fixed here:

* **The memory budget is an Optuna constraint.** Before a result is told, the trial gets
  ``trial.set_constraint("memory", peak - budget)`` (Optuna 5's API; feasible when <= 0), so every sampler
  (TPE, NSGA-II, GP) learns where the wall is. Ray passes no constraints at all.
* **Early-stopped trials are PRUNED.** A trial the scheduler (MOASHA, ASHA) stopped reaches ``on_trial_complete``
  with its last *epoch* result; Ray would tell it as COMPLETE with a low-fidelity score. Here it is told as PRUNED
  (with its memory constraint so far). Only the scheduler's own STOP decisions count as pruning.
* **Infeasible is not failed.** A trial refused by the memory predictor or stopped by the budget is told as
  COMPLETE with its memory and a positive constraint (accuracy 0), not as a silent FAIL the sampler ignores.
* **A wrong packing guess is not a result.** A trial that ran out of its GPU share under the budget reports
  ``requeue``: it is not told, and is handed out again (same Optuna trial) with a larger share.
* **Each configuration is trained once.** A proposal that repeats a configuration already tried is told the
  earlier outcome and the sampler is asked again (:mod:`autoside.tune.dedup`); a finite space fully tried ends the
  search early.
* **The sampler runs on one torch thread.** Optuna's GP fits and optimises in torch, in the driver, while the
  trials hold every core; torch's own thread pool then oversubscribes them (the asks of a 24-trial GP study on 2
  cores beside two busy processes: 308 s with torch's default threads, 76 s with one; ``benchmarks/README.md``).
* **Trial identity survives a restart.** Each suggestion carries the Optuna trial number (the trial's id, its folder
  and its MLflow run); on resume, trials that were running when the driver died are handed out again under the same
  number instead of being lost or duplicated.

The searcher's state lives in the Optuna storage (SQLite), not in Ray's checkpoint, so ``save``/``restore`` are
no-ops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import optuna
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from autoside.errors import ConfigError
from autoside.tune.dedup import REASKS, Ledger
from autoside.tune.pareto import OBJECTIVES
from autoside.tune.space import SearchSpace
from autoside.tune.trial import FINAL_KEY, RECORD_KEY, trial_id_of

Finisher = Callable[[int, str, dict[str, Any], dict[str, Any]], None]


class AutosideOptunaSearch(OptunaSearch):
    """Multi-objective, constrained Optuna search over a :class:`SearchSpace` (see the module docstring).

    Args:
        space: the validated search space.
        objectives: names from :data:`autoside.tune.pareto.OBJECTIVES` (accuracy, memory, optionally params).
        sampler: an Optuna sampler.
        storage: the Optuna storage (persisted beside the MLflow store).
        study_name: the study in that storage.
        budget_bytes: the hard memory budget (``None``: unconstrained).
        pending: frozen RUNNING trials of a previous driver, handed out again first.
        scheduler: the early-stopping scheduler in use, if any; it lists the trials it stopped in ``stopped``
            (:mod:`autoside.tune.schedulers`).
        on_finish: ``(number, status, last_result, params)`` called before a finished trial is told, when its last
            result carries the trial's record or its worker could not finish it (pruned, crashed); the driver
            writes its ``result.json`` there (from that record, or from what the trial reported last).
        on_told: ``(number, status)`` after each tell (progress display).
        on_duplicate: ``(number, original, params)`` for a proposal not trained because trial ``original`` ran it.
        resources: optional ``config -> extra config`` (e.g. a memory prediction for GPU packing).
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        objectives: tuple[str, ...],
        sampler: optuna.samplers.BaseSampler,
        storage: optuna.storages.BaseStorage,
        study_name: str,
        budget_bytes: int | None,
        pending: list[optuna.trial.FrozenTrial] | None = None,
        scheduler: TrialScheduler | None = None,
        on_finish: Finisher | None = None,
        on_told: Callable[[int, str], None] | None = None,
        on_duplicate: Callable[[int, int, dict[str, Any]], None] | None = None,
        resources: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        metrics = [OBJECTIVES[o][0] for o in objectives]
        modes = [OBJECTIVES[o][1] for o in objectives]
        self.autoside_space = space
        # Samplers that model only the parameters all trials share see a flat space (SearchSpace.suggest).
        self.flat = isinstance(sampler, (optuna.samplers.GPSampler, optuna.samplers.NSGAIISampler))
        super().__init__(
            space=self._define_by_run,
            metric=metrics,
            mode=modes,
            sampler=sampler,
            study_name=study_name,
            storage=storage,
        )
        self.budget_bytes = budget_bytes
        self.pending = list(pending or [])
        self.scheduler = scheduler
        self.on_finish = on_finish
        self.on_told = on_told
        self.on_duplicate = on_duplicate
        self.finished_early = False  # no untried configuration was left to propose
        self.ledger = Ledger(self._ot_study, space, seed=len(self._ot_study.get_trials(deepcopy=False)))
        self.resources = resources
        self.limit: int | None = None  # new configurations to hand out (requeued ones come on top)
        self.requeued: list[tuple[optuna.trial.Trial, dict[str, Any]]] = []
        self._handed_out = 0
        self._configs: dict[str, dict[str, Any]] = {}
        self._last: dict[str, dict[str, Any]] = {}

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    def _define_by_run(self, trial: Any) -> None:
        self.autoside_space.suggest(trial, flat=self.flat)

    def _walk(self, ot_trial: optuna.trial.Trial) -> dict[str, Any]:
        """Sample (or complete) a trial's parameters; returns those that make its configuration."""
        self.autoside_space.suggest(ot_trial, flat=self.flat)
        return self.autoside_space.active(ot_trial.params)

    # -- asking ------------------------------------------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        with _one_torch_thread():
            return self._suggest(trial_id)

    def _suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if trial_id in self._configs:
            return self._configs[trial_id]
        if self.requeued:
            ot_trial, config = self.requeued.pop(0)
            self._ot_trials[trial_id] = ot_trial
            self._configs[trial_id] = config
            return config
        if self.limit is not None and self._handed_out >= self.limit:
            # Done unless a running trial may still be requeued (Tune's sample count leaves room for that).
            return None if set(self._ot_trials) - self._completed_trials else Searcher.FINISHED
        if self.pending:
            frozen = self.pending.pop(0)
            ot_trial = optuna.trial.Trial(self._ot_study, frozen._trial_id)
            # A driver killed while the trial was being sampled leaves only some of its parameters stored: walking
            # the space again returns the stored values and samples the missing ones.
            params = self._walk(ot_trial)
            # A driver killed between asking a proposal and finding it a repeat left it running unmarked: it is a
            # repeat all the same, told the earlier outcome instead of being trained.
            original = self.ledger.check(ot_trial, params)
            if original is not None:
                if self.on_duplicate is not None:
                    self.on_duplicate(ot_trial.number, original, params)
                return self._suggest(trial_id)
        else:
            asked = self._ask_new()
            if asked is None:
                if set(self._ot_trials) - self._completed_trials:
                    return None  # all tried or running: ask again later, a running one may fail and be free again
                self.finished_early = True
                return Searcher.FINISHED
            ot_trial, params = asked
        config = {"trial_number": ot_trial.number, "params": params}
        if self.resources is not None:
            config.update(self.resources(config))
        self._ot_trials[trial_id] = ot_trial
        self._configs[trial_id] = config
        self._handed_out += 1
        return config

    def _requeue(self, trial_id: str) -> None:
        """Hand a trial that ran out of its share out again (same Optuna trial) with a larger one."""
        config = {**self._configs[trial_id], "attempt": int(self._configs[trial_id].get("attempt", 1)) + 1}
        config.update(self.resources(config) if self.resources is not None else {"share_bytes": None})
        self.requeued.append((self._ot_trials[trial_id], config))

    def _ask_new(self) -> tuple[optuna.trial.Trial, dict[str, Any]] | None:
        """A valid configuration not tried yet (see :mod:`autoside.tune.dedup`); ``None`` when none is left."""
        for attempt in range(REASKS + 1):
            if self.ledger.exhausted():
                return None
            if attempt == REASKS:  # the sampler keeps proposing tried configurations: take an untried one
                params = self.ledger.fresh()
                if params is None:
                    return None
                self._ot_study.enqueue_trial(params)
            ot_trial, params = self._ask_valid()
            original = self.ledger.check(ot_trial, params)
            if original is None:
                return ot_trial, params
            if self.on_duplicate is not None:
                self.on_duplicate(ot_trial.number, original, params)
        return None

    def _ask_valid(self) -> tuple[optuna.trial.Trial, dict[str, Any]]:
        """Ask until the family accepts the sampled combination (a rejected one is told as FAIL with the reason)."""
        for _ in range(100):
            ot_trial = self._ot_study.ask()
            try:
                params = self._walk(ot_trial)
            except ConfigError as exc:
                ot_trial.set_user_attr("autoside_status", "invalid")
                ot_trial.set_user_attr("reason", str(exc)[:500])
                self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
                continue
            return ot_trial, params
        raise ConfigError("the search space produced 100 invalid configurations in a row; narrow its ranges")

    # -- telling -----------------------------------------------------------------------------------------------------
    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        # Multi-objective Optuna has no intermediate values; keep the last epoch for a pruned trial's record.
        self._last[trial_id] = dict(result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        last = dict(result or self._last.get(trial_id) or {})
        status = last.get(FINAL_KEY)
        if status == "requeue":
            self._requeue(trial_id)
            self._completed_trials.add(trial_id)
            return
        unfinished = status is None
        if unfinished:
            if self.scheduler is not None and trial_id in self.scheduler.stopped:
                status = "pruned"
            elif error:
                status = "failed"
            else:
                # Stopped by the driver shutting down (Ctrl-C): not finished, so not told; a resume runs it again.
                self._completed_trials.add(trial_id)
                return
        if self.on_finish is not None and (unfinished or RECORD_KEY in last):  # recorded before the tell
            self.on_finish(ot_trial.number, status, last, self._configs[trial_id]["params"])
        self.tell(ot_trial, status, last)
        self._completed_trials.add(trial_id)

    def tell(self, ot_trial: optuna.trial.Trial, status: str, metrics: dict[str, Any]) -> None:
        """Tell Optuna one finished trial (also used on resume for trials recorded but never told)."""
        study = self._ot_study
        memory = metrics.get("peak_memory_bytes")
        ot_trial.set_user_attr("autoside_status", status)
        ot_trial.set_user_attr("trial_id", trial_id_of(ot_trial.number))
        if self.budget_bytes is not None and memory is not None and status in ("ok", "infeasible", "pruned"):
            excess = float(memory) - self.budget_bytes
            if status == "infeasible":
                excess = max(excess, 1.0)  # refused or stopped at the budget: infeasible even if it stopped right at it
            ot_trial.set_constraint("memory", excess)
        if status in ("ok", "infeasible"):
            values = [float(metrics.get(m, 0.0)) for m in self.metric]
            study.tell(ot_trial, values, state=optuna.trial.TrialState.COMPLETE, skip_if_finished=True)
        elif status == "pruned":
            study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED, skip_if_finished=True)
        else:
            study.tell(ot_trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        self.ledger.resolve(ot_trial.number)
        if self.on_told is not None:
            self.on_told(ot_trial.number, status)

    # -- state lives in the Optuna storage -------------------------------------------------------------------------
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as fh:
            fh.write("autoside: the search state lives in the Optuna storage\n")

    def restore(self, checkpoint_path: str) -> None:
        return None


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Torch on one thread for the block, then as it was (a user's own process may call ``autoside.search``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


AUTO_GP_MAX_TRIALS = 200
SAMPLERS = ("auto", "family-gp", "tpe", "nsga2", "gp", "random")


def resolve_sampler(name: str, num_samples: int) -> str:
    """``auto`` (the default): a GP per family with a bandit over the families
    (:class:`~autoside.tune.families.FamilyGPSampler`) for searches of up to :data:`AUTO_GP_MAX_TRIALS` trials,
    TPE above.

    On the demo space it reached the highest and steadiest hypervolume after 24 trials of the samplers measured
    (``benchmarks/sampler_quality.py``, README there); a GP's fit grows cubically with the trials told, TPE's does
    not. Resolved once, when a search is created, so a resumed search keeps its sampler.
    """
    if name not in SAMPLERS:
        raise ConfigError(f"--sampler: {name!r} is not one of {', '.join(SAMPLERS)}")
    if name != "auto":
        return name
    return "family-gp" if num_samples <= AUTO_GP_MAX_TRIALS else "tpe"


def make_sampler(
    name: str, *, seed: int | None, num_samples: int, space: SearchSpace, told: int = 0
) -> optuna.samplers.BaseSampler:
    """The Optuna sampler behind ``--sampler``; start-up trials scale with the search so small searches still learn.

    ``told`` is the number of trials the study already holds: a resumed search derives its seed from it, so its
    sampler does not replay the random stream (and the proposals) of the first run.
    """
    name = resolve_sampler(name, num_samples)
    if seed is not None and told:
        import numpy as np

        seed = int(np.random.SeedSequence([seed, told]).generate_state(1)[0])
    startup = max(4, min(10, num_samples // 3))
    if name == "family-gp":
        from autoside.tune.families import FamilyGPSampler

        return FamilyGPSampler(space, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=startup, multivariate=True, group=True, constant_liar=True
        )
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, num_samples // 3)))
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    return optuna.samplers.RandomSampler(seed=seed)
