"""Early stopping for a two-objective search: ``--scheduler moasha`` (and Ray's ``asha``, made honest).

**MOASHA** (multi-objective asynchronous successive halving; Schmucker et al., 2021) keeps ASHA's rungs (epochs
``grace * eta**k`` below the last) but decides promotions by non-dominated rank over (validation accuracy, measured
peak memory so far) instead of accuracy alone. Memory is known after the first epoch and does not improve with
training, so a cheap trial with lower accuracy is on the front at its rung and goes on: the memory end of the front is
not starved the way single-objective ASHA starves it. At a rung, a trial continues when it is non-dominated among the
trials recorded there, or when its (rank, crowding distance) order puts it in the top ``1/eta`` of them; otherwise it
is stopped (and told to Optuna as PRUNED). Infeasible trials never enter a rung: a trial's final result (marked
``autoside_status``) is never ranked, so an accuracy of 0 cannot lower anyone's bar.

:class:`RecordingASHA` is Ray's ASHA (accuracy alone) with the same two guarantees: it remembers whom it stopped,
and final results of trials that did not finish (infeasible, failed) stay out of its rungs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from autoside.tune.pareto import OBJECTIVES, non_dominated
from autoside.tune.trial import FINAL_KEY


def _unfinished(result: dict[str, Any]) -> bool:
    return FINAL_KEY in result and result[FINAL_KEY] != "ok"


class RecordingASHA(ASHAScheduler):
    """ASHA on validation accuracy that remembers which trials it stopped (they are told as PRUNED, nothing else
    is), and keeps infeasible and failed trials' final results out of its rungs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stopped: set[str] = set()

    def on_trial_result(self, tune_controller, trial, result):  # noqa: ANN001, ANN201 - Ray's signature
        if _unfinished(result):
            return TrialScheduler.CONTINUE
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and FINAL_KEY not in result:
            self.stopped.add(trial.trial_id)
        return decision

    def on_trial_complete(self, tune_controller, trial, result):  # noqa: ANN001, ANN201 - Ray's signature
        if result and _unfinished(result):
            self._trial_info.pop(trial.trial_id, None)
            return
        super().on_trial_complete(tune_controller, trial, result)

    def replay(self, key: str, epoch: int, metrics: dict[str, Any]) -> None:
        """Record a result a previous driver saw (see :func:`replay_records`) in the rungs it would have entered."""
        if "val_accuracy" in metrics:
            self._brackets[0].on_result(_Past(key), epoch, self._metric_op * float(metrics["val_accuracy"]))


def ranks(points: Sequence[Sequence[float]], senses: Sequence[str]) -> list[int]:
    """Non-dominated sorting: 0 for the front, 1 for the front of the rest, and so on."""
    out = [-1] * len(points)
    left, rank = list(range(len(points))), 0
    while left:
        front = [left[i] for i in non_dominated([points[j] for j in left], senses)]
        for i in front:
            out[i] = rank
        left = [i for i in left if out[i] < 0]
        rank += 1
    return out


def crowding(points: Sequence[Sequence[float]], members: Sequence[int]) -> dict[int, float]:
    """NSGA-II crowding distance of ``members`` (indices into ``points``) within their front; ends are infinite."""
    out = {i: 0.0 for i in members}
    for k in range(len(points[0]) if points else 0):
        order = sorted(members, key=lambda i: points[i][k])
        span = points[order[-1]][k] - points[order[0]][k] or 1.0
        out[order[0]] = out[order[-1]] = math.inf
        for a, b, c in zip(order, order[1:], order[2:]):
            out[b] += (points[c][k] - points[a][k]) / span
    return out


class ParetoRungs:
    """MOASHA's bookkeeping and decision, free of Ray (see the module docstring)."""

    def __init__(
        self, *, max_t: int, grace_period: int = 1, reduction_factor: float = 2, senses: Sequence[str] = ("max", "min")
    ) -> None:
        self.eta, self.senses = reduction_factor, list(senses)
        self.milestones: list[int] = []
        t = grace_period
        while t < max_t:
            self.milestones.append(int(t))
            t *= reduction_factor
        self.rungs: dict[int, dict[str, list[float]]] = {m: {} for m in self.milestones}

    def on_result(self, trial_id: str, t: int, point: Sequence[float]) -> bool:
        """Record ``point`` at the highest rung ``t`` reached (once per rung); False when the trial should stop."""
        for milestone in reversed(self.milestones):
            if t >= milestone and trial_id not in self.rungs[milestone]:
                rung = self.rungs[milestone]
                rung[trial_id] = list(point)
                return self.keeps(rung, trial_id)
        return True

    def keeps(self, rung: dict[str, list[float]], trial_id: str) -> bool:
        ids, points = list(rung), list(rung.values())
        rank = ranks(points, self.senses)
        me = ids.index(trial_id)
        if rank[me] == 0:
            return True
        keep = max(1, len(ids) // int(self.eta)) if len(ids) >= self.eta else len(ids)
        distance: dict[int, float] = {}
        for r in set(rank):
            distance.update(crowding(points, [i for i in range(len(ids)) if rank[i] == r]))
        order = sorted(range(len(ids)), key=lambda i: (rank[i], -distance[i], ids[i]))
        return order.index(me) < keep


class MOASHA(FIFOScheduler):
    """Ray Tune scheduler for MOASHA over the search's first two objectives (see the module docstring)."""

    def __init__(
        self,
        *,
        max_t: int,
        grace_period: int = 1,
        reduction_factor: float = 2,
        objectives: Sequence[str] = ("accuracy", "memory"),
        time_attr: str = "training_iteration",
    ) -> None:
        super().__init__()
        self.keys = [OBJECTIVES[o][0] for o in objectives[:2]]
        self.time_attr = time_attr
        self.rungs = ParetoRungs(
            max_t=max_t,
            grace_period=grace_period,
            reduction_factor=reduction_factor,
            senses=[OBJECTIVES[o][1] for o in objectives[:2]],
        )
        self.stopped: set[str] = set()

    def on_trial_result(self, tune_controller, trial, result):  # noqa: ANN001, ANN201 - Ray's signature
        if FINAL_KEY in result or self.time_attr not in result or any(k not in result for k in self.keys):
            return TrialScheduler.CONTINUE
        point = [float(result[k]) for k in self.keys]
        if self.rungs.on_result(trial.trial_id, int(result[self.time_attr]), point):
            return TrialScheduler.CONTINUE
        self.stopped.add(trial.trial_id)
        return TrialScheduler.STOP

    def replay(self, key: str, epoch: int, metrics: dict[str, Any]) -> None:
        """Record a result a previous driver saw (see :func:`replay_records`) in the rungs it would have entered."""
        if all(k in metrics for k in self.keys):
            self.rungs.on_result(key, epoch, [float(metrics[k]) for k in self.keys])

    def debug_string(self) -> str:
        sizes = ", ".join(f"{m}: {len(r)}" for m, r in self.rungs.rungs.items())
        return f"MOASHA: {len(self.stopped)} stopped; trials per rung {{{sizes}}}"


class _Past:
    """A finished trial of an earlier driver, as Ray's rung bookkeeping names it."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def replay_records(scheduler: RecordingASHA | MOASHA | None, records: Sequence[Any]) -> int:
    """Give a resumed search's scheduler the rungs its earlier drivers had filled: every epoch result of the trials
    that finished (a pruned trial's record holds its last one), so the bars trials must pass are those they would
    have faced without the restart. Returns the number of results replayed."""
    if scheduler is None:
        return 0
    replayed = 0
    for record in records:
        if record.status not in ("ok", "pruned"):  # infeasible and failed trials never enter a rung
            continue
        history = record.metrics.get("history") or [record.metrics]
        for metrics in history:
            if "epoch" in metrics:
                scheduler.replay(f"past-{record.number}", int(metrics["epoch"]), metrics)
                replayed += 1
    return replayed


def make_scheduler(name: str, *, epochs: int, objectives: Sequence[str]) -> TrialScheduler | None:
    """The scheduler behind ``--scheduler`` (``none``: every trial trains all its epochs)."""
    if name == "asha":
        return RecordingASHA(
            time_attr="training_iteration",
            metric="val_accuracy",
            mode="max",
            max_t=epochs,
            grace_period=1,
            reduction_factor=2,
        )
    if name == "moasha":
        return MOASHA(max_t=epochs, grace_period=1, reduction_factor=2, objectives=objectives)
    return None
