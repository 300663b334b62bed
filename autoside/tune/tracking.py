"""MLflow bookkeeping of a search: one parent run per search, one nested run per trial.

The parent run holds the space, the recipe, the sampler, the budget, library versions and the hardware; at the end
it gets ``pareto.csv``, ``pareto.png`` and the hypervolume (final value and a series over trials). Each trial's run
is nested under it (``mlflow.parentRunId``) and holds the sampled parameters, per-epoch metrics, final metrics, the
trial's status (``ok`` / ``infeasible`` / ``pruned`` / ``failed``) as the tag ``status``, ``pareto=true`` for
front members, and the exported side network as the artifact folder ``side_network``.

Everything goes through :class:`mlflow.tracking.MlflowClient` with explicit run ids (never MLflow's global "active
run"), so the driver and several trials in one process or many can log at the same time. The default store is a
SQLite file beside the searches (``sqlite:///<root>/mlflow.db``), artifacts in ``<root>/mlartifacts``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

TRIAL_NUMBER_TAG = "autoside.trial_number"
SEARCH_TAG = "autoside.search"


def default_tracking_uri(root: Path) -> str:
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def artifact_location(root: Path) -> str:
    return (Path(root).resolve() / "mlartifacts").as_uri()


def is_server(tracking_uri: str) -> bool:
    """True for an MLflow tracking server (``http(s)://``), which every node of a cluster can reach."""
    return tracking_uri.startswith(("http://", "https://"))


def ui_command(tracking_uri: str) -> str:
    if is_server(tracking_uri):
        return f"open {tracking_uri}"
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def _quiet() -> None:
    import logging

    for name in ("mlflow", "alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


def client(tracking_uri: str):  # noqa: ANN201 - mlflow is imported lazily
    _quiet()
    from mlflow.tracking import MlflowClient

    return retry(lambda: MlflowClient(tracking_uri))


def retry(fn: Callable[[], T], attempts: int = 8) -> T:
    """Run an MLflow call, retrying when SQLite reports a locked database (several trials write at once)."""
    delay = 0.2
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - MlflowException or SQLAlchemy OperationalError
            if "locked" not in str(exc).lower() or attempt == attempts - 1:
                raise
            time.sleep(delay)
            delay = min(2.0, delay * 2)
    raise AssertionError("unreachable")


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("autoside", "torch", "timm", "ray", "optuna", "mlflow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def hardware() -> dict[str, str]:
    from autoside.memory.meter import _cpu_name

    info = {"cpu": _cpu_name(), "cpu_count": str(os.cpu_count()), "platform": platform.platform()}
    try:
        info["ram_gib"] = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1024**3:.1f}"
    except (ValueError, OSError, AttributeError):
        pass
    try:
        import torch

        if torch.cuda.is_available():
            info["gpus"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except Exception:  # noqa: BLE001 - hardware info is best effort
        pass
    return info


def flat(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested dict -> ``{"a.b": "value"}`` with values as strings (MLflow params)."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flat(value, f"{prefix}{key}."))
    else:
        out[prefix[:-1]] = json.dumps(data) if isinstance(data, (list, tuple)) else str(data)
    return out


def log_params(mlflow_client, run_id: str, params: dict[str, str]) -> None:  # noqa: ANN001
    from mlflow.entities import Param

    items = [Param(k[:250], v[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        retry(lambda chunk=items[i : i + 100]: mlflow_client.log_batch(run_id, params=chunk))


def log_metrics(  # noqa: ANN001
    mlflow_client, run_id: str, metrics: dict[str, float], step: int = 0, stamp: int | None = None
) -> int:
    """Log metrics at ``step`` (``stamp``: milliseconds, default now); returns the stamp used."""
    from mlflow.entities import Metric

    stamp = stamp or int(time.time() * 1000)
    items = [Metric(k, float(v), stamp, step) for k, v in metrics.items() if isinstance(v, (int, float))]
    if items:
        retry(lambda: mlflow_client.log_batch(run_id, metrics=items))
    return stamp


def set_tags(mlflow_client, run_id: str, tags: dict[str, str]) -> None:  # noqa: ANN001
    from mlflow.entities import RunTag

    retry(lambda: mlflow_client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))


def start_parent(
    tracking_uri: str, root: Path, name: str, *, params: dict[str, str], tags: dict[str, str], artifacts: dict[str, Any]
) -> tuple[str, str]:
    """Create the experiment (one per search, named like it) and its parent run; returns (experiment id, run id)."""
    c = client(tracking_uri)
    experiment = retry(lambda: c.get_experiment_by_name(name))
    if experiment is None:
        # A tracking server keeps artifacts where it was told to (``--artifacts-destination``, served over HTTP): a
        # local folder of the driver would be unreachable from other nodes.
        location = None if is_server(tracking_uri) else f"{artifact_location(root)}/{name}"
        experiment_id = retry(lambda: c.create_experiment(name, artifact_location=location))
    else:
        experiment_id = experiment.experiment_id
    run = retry(lambda: c.create_run(experiment_id, run_name=name, tags={SEARCH_TAG: name, **tags}))
    log_params(c, run.info.run_id, params)
    for file_name, data in artifacts.items():
        retry(lambda f=file_name, d=data: c.log_dict(run.info.run_id, d, f))
    return experiment_id, run.info.run_id


def reopen(tracking_uri: str, run_id: str) -> None:
    c = client(tracking_uri)
    retry(lambda: c.update_run(run_id, status="RUNNING"))


def trial_runs(tracking_uri: str, experiment_id: str, parent_run_id: str) -> list[Any]:
    """Active (not deleted) trial runs nested under the parent."""
    c = client(tracking_uri)
    query = f"tags.mlflow.parentRunId = '{parent_run_id}'"
    runs, token = [], None
    while True:
        page = retry(
            lambda t=token: c.search_runs([experiment_id], filter_string=query, max_results=1000, page_token=t)
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def delete_trial_runs(tracking_uri: str, experiment_id: str, parent_run_id: str, numbers: Iterable[int]) -> int:
    """Delete the runs of trials that will run again (killed mid-trial), so each trial is in MLflow once."""
    wanted = {str(n) for n in numbers}
    c = client(tracking_uri)
    deleted = 0
    for run in trial_runs(tracking_uri, experiment_id, parent_run_id):
        if run.data.tags.get(TRIAL_NUMBER_TAG) in wanted:
            retry(lambda r=run: c.delete_run(r.info.run_id))
            deleted += 1
    return deleted


class TrialRun:
    """The nested MLflow run of one trial, used from the trial's worker process (and by the driver to close the
    run of a trial that the scheduler stopped)."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.client = client(tracking_uri)
        self.run_id = run_id
        self.last_step, self.last_stamp = 0, 0

    @classmethod
    def start(
        cls,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        *,
        number: int,
        trial_id: str,
        search: str,
        params: dict[str, Any],
        config: dict[str, Any],
    ) -> TrialRun:
        c = client(tracking_uri)
        tags = {
            "mlflow.parentRunId": parent_run_id,
            TRIAL_NUMBER_TAG: str(number),
            SEARCH_TAG: search,
            "autoside.trial_id": trial_id,
            "family": str(config.get("family", "")),
            "status": "running",
        }
        run = retry(lambda: c.create_run(experiment_id, run_name=f"trial-{trial_id}", tags=tags))
        self = cls.__new__(cls)
        self.client, self.run_id, self.last_step, self.last_stamp = c, run.info.run_id, 0, 0
        log_params(
            c,
            self.run_id,
            {**{k: str(v) for k, v in params.items()}, **{f"sidenet.{k}": v for k, v in flat(config).items()}},
        )
        return self

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        epoch_metrics = {k: v for k, v in metrics.items() if k != "epoch"}
        self.last_stamp = log_metrics(self.client, self.run_id, epoch_metrics, step=epoch)
        self.last_step = epoch

    def finish(
        self,
        status: str,
        metrics: dict[str, Any] | None = None,
        *,
        tags: dict[str, str] | None = None,
        artifacts_dir: Path | None = None,
    ) -> None:
        if metrics:
            final = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            final = {f"final_{k}" if k == "epoch" else k: v for k, v in final.items()}
            # At the last epoch's step and after it: MLflow's run table shows a metric's value at the highest step
            # (latest time among equal steps), so it shows the final figures (on CUDA the allocator peak).
            stamp = max(int(time.time() * 1000), self.last_stamp + 1)
            log_metrics(self.client, self.run_id, final, step=self.last_step, stamp=stamp)
        if artifacts_dir is not None and Path(artifacts_dir).is_dir():
            retry(lambda: self.client.log_artifacts(self.run_id, str(artifacts_dir), "side_network"))
        set_tags(self.client, self.run_id, {"status": status, **(tags or {})})
        mlflow_status = {"ok": "FINISHED", "infeasible": "FINISHED", "pruned": "KILLED"}.get(status, "FAILED")
        retry(lambda: self.client.set_terminated(self.run_id, mlflow_status))
