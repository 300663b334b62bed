"""A search on disk, read back: ``<root>/<name>/search.json`` + ``trials/<id>/result.json`` (+ ``optuna.db``).

Layout of a search folder::

    <root>/mlflow.db                 MLflow store shared by the searches under <root> (default tracking URI)
    <root>/mlartifacts/              MLflow artifacts
    <root>/<name>/search.json        space, recipe, options, status, MLflow ids
    <root>/<name>/optuna.db          the Optuna study (``optuna-dashboard sqlite:///<root>/<name>/optuna.db``)
    <root>/<name>/trials/<id>/result.json      params, side config, status, metrics, MLflow run id (and key), node
    <root>/<name>/trials/<id>/side_network/    only while MLflow lacks them (sent while the server was down), and in
                                               searches written before weights went to MLflow only
    <root>/<name>/mlflow_pending.json          the search's own MLflow writes not sent yet (see tune.outbox)

The driver alone writes it, from the records trials send back through Ray. A trial's side network is the artifact
``side_network`` of its MLflow run (``runs:/<run id>/side_network``; :func:`autoside.export.pick.export_trial`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoside.errors import AutosideError, ConfigError

SEARCH_FILE = "search.json"
RESULT_FILE = "result.json"
DEFAULT_ROOT = "autoside_runs"


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial as recorded in its ``result.json``."""

    trial_id: str
    number: int
    params: dict[str, Any]
    config: dict[str, Any]
    status: str
    metrics: dict[str, Any]
    mlflow_run_id: str | None = None
    artifact_dir: Path | None = None
    reason: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_file(cls, path: Path) -> TrialRecord:
        data = json.loads(path.read_text())
        art = path.parent / "side_network"
        return cls(
            trial_id=data["trial_id"],
            number=int(data["number"]),
            params=data.get("params", {}),
            config=data.get("config", {}),
            status=data["status"],
            metrics=data.get("metrics") or {},
            mlflow_run_id=data.get("mlflow_run_id"),
            artifact_dir=art if art.is_dir() else None,
            reason=data.get("reason"),
            raw=data,
        )

    @property
    def accuracy(self) -> float | None:
        return self.metrics.get("val_accuracy")

    @property
    def memory(self) -> int | None:
        return self.metrics.get("peak_memory_bytes")


def search_dir(name: str, root: str | Path | None = None) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"search name {name!r}: not a valid name (letters, digits, - and _)")
    return Path(root or DEFAULT_ROOT) / name


def read_records(path: Path) -> list[TrialRecord]:
    records = []
    for file in sorted((path / "trials").glob(f"*/{RESULT_FILE}")):
        records.append(TrialRecord.from_file(file))
    return sorted(records, key=lambda r: r.number)


class SearchResult:
    """A search read back from disk: its trials, Pareto set and best trial under a budget."""

    def __init__(self, path: Path, meta: dict[str, Any], trials: list[TrialRecord]) -> None:
        self.dir = Path(path)
        self.meta = meta
        self.name = meta["name"]
        self.trials = trials

    @property
    def options(self) -> dict[str, Any]:
        return self.meta["options"]

    @property
    def objectives(self) -> tuple[str, ...]:
        return tuple(self.options.get("objectives", ("accuracy", "memory")))

    @property
    def budget_bytes(self) -> int | None:
        return self.meta.get("budget_bytes")

    @property
    def status(self) -> str:
        return self.meta.get("status", "unknown")

    @property
    def space(self):  # noqa: ANN201 - SearchSpace, imported lazily
        from autoside.tune.space import space_from_dict

        return space_from_dict(self.meta["space"], source=f"{self.dir / SEARCH_FILE}: space")

    @property
    def recipe(self):  # noqa: ANN201 - Recipe
        from autoside.recipe import recipe_from_dict

        return recipe_from_dict(self.meta["recipe"], source=f"{self.dir / SEARCH_FILE}: recipe")

    @property
    def tracking_uri(self) -> str:
        return self.meta["tracking_uri"]

    @property
    def optuna_storage(self) -> str:
        return f"sqlite:///{(self.dir / 'optuna.db').resolve()}"

    @property
    def pareto(self) -> list[TrialRecord]:
        from autoside.tune.pareto import pareto_front

        return pareto_front(self.trials, self.objectives, self.budget_bytes)

    @property
    def hypervolume(self) -> float:
        from autoside.tune.pareto import search_hypervolume

        return search_hypervolume(self.trials, self.objectives, self.budget_bytes)

    def knee(self) -> TrialRecord | None:
        from autoside.tune.pareto import knee_point

        return knee_point(self.pareto, self.objectives)

    def best(self, budget: str | int | None = None) -> TrialRecord:
        """The most accurate trial whose measured memory fits ``budget`` (default: the search's budget)."""
        from autoside.tune.pareto import select_by_budget
        from autoside.units import parse_bytes

        limit = parse_bytes(budget, field="budget") if budget is not None else self.budget_bytes
        if limit is None:
            limit = max((r.memory or 0 for r in self.trials), default=0) or 1
        return select_by_budget(self.trials, limit)

    def trial(self, trial_id: str | int) -> TrialRecord:
        key = trial_id if isinstance(trial_id, str) else f"{trial_id:04d}"
        for r in self.trials:
            if r.trial_id == key:
                return r
        raise AutosideError(f"search {self.name!r} has no trial {key}")

    def counts(self) -> dict[str, int]:
        out = {"ok": 0, "infeasible": 0, "pruned": 0, "failed": 0}
        for r in self.trials:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def __repr__(self) -> str:
        return f"SearchResult({self.name!r}, {len(self.trials)} trials, {len(self.pareto)} on the front)"


def list_searches(root: str | Path | None = None) -> list[str]:
    base = Path(root or DEFAULT_ROOT)
    return sorted(p.parent.name for p in base.glob(f"*/{SEARCH_FILE}")) if base.is_dir() else []


def open_search(name: str, *, root: str | Path | None = None) -> SearchResult:
    """Read a search back from ``<root>/<name>``; a missing search names the ones that exist."""
    path = search_dir(name, root)
    meta_file = path / SEARCH_FILE
    if not meta_file.is_file():
        known = list_searches(root)
        hint = f" (searches there: {', '.join(known)})" if known else ""
        raise AutosideError(f"no search named {name!r} in {Path(root or DEFAULT_ROOT)}{hint}")
    return SearchResult(path, json.loads(meta_file.read_text()), read_records(path))
