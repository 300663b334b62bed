"""MLflow bookkeeping of a search: one parent run per search, one nested run per trial.

The parent run holds the space, the recipe, the sampler, the budget, library versions and the hardware; at the end
it gets ``pareto.csv``, ``pareto.png`` and the hypervolume (final value and a series over trials). Each trial's run
is nested under it (``mlflow.parentRunId``) and holds the sampled parameters, per-epoch metrics, final metrics, the
trial's status (``ok`` / ``infeasible`` / ``pruned`` / ``failed``) as the tag ``status``, ``pareto=true`` for
front members, and the exported side network as the artifact folder ``side_network``.

Everything goes through :class:`mlflow.tracking.MlflowClient` with explicit run ids (never MLflow's global "active
run"), so the driver and several trials in one process or many can log at the same time; the writes of a search go
through :class:`autoside.tune.journal.Journal`, which waits out a tracking server that is down. The default store is
a SQLite file beside the searches (``sqlite:///<root>/mlflow.db``), artifacts in ``<root>/mlartifacts``; a file
store keeps its artifacts in its own folder, a tracking server where it was told to.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from autoside.tune.journal import TRIAL_NUMBER_TAG, Journal, log_op, mlflow_client, new_run_key, now_ms, retry

SEARCH_TAG = "autoside.search"


def default_tracking_uri(root: Path) -> str:
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def artifact_location(root: Path) -> str:
    return (Path(root).resolve() / "mlartifacts").as_uri()


def is_server(tracking_uri: str) -> bool:
    """True for an MLflow tracking server (``http(s)://``), which every node of a cluster can reach."""
    return tracking_uri.startswith(("http://", "https://"))


def file_store_folder(tracking_uri: str) -> str | None:
    """The folder of a file-based MLflow store (``file:///path``, ``file:rel`` or a plain path), as given (a relative
    one is resolved by each process in its own working directory); None for a server or a database (SQLite, ...)."""
    from urllib.parse import urlparse

    if "://" not in tracking_uri and not tracking_uri.startswith(("file:", "databricks")):
        return tracking_uri
    parsed = urlparse(tracking_uri)
    if parsed.scheme != "file":
        return None
    return parsed.path if tracking_uri.startswith("file://") else tracking_uri.removeprefix("file:")


def ui_command(tracking_uri: str) -> str:
    if is_server(tracking_uri):
        return f"open {tracking_uri}"
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def client(tracking_uri: str):  # noqa: ANN201 - mlflow is imported lazily
    return retry(lambda: mlflow_client(tracking_uri))


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


def log_params(c, run_id: str, params: dict[str, str]) -> None:  # noqa: ANN001 - an MlflowClient
    from mlflow.entities import Param

    items = [Param(k[:250], v[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        retry(lambda chunk=items[i : i + 100]: c.log_batch(run_id, params=chunk))


def start_parent(
    tracking_uri: str, root: Path, name: str, *, params: dict[str, str], tags: dict[str, str], artifacts: dict[str, Any]
) -> tuple[str, str]:
    """Create the experiment (one per search, named like it) and its parent run; returns (experiment id, run id)."""
    c = client(tracking_uri)
    experiment = retry(lambda: c.get_experiment_by_name(name))
    if experiment is None:
        # A tracking server keeps artifacts where it was told to (``--artifacts-destination``, served over HTTP): a
        # local folder of the driver would be unreachable from other nodes.
        # A file store keeps them in its own folder (one folder to share between nodes).
        database = not is_server(tracking_uri) and file_store_folder(tracking_uri) is None
        location = f"{artifact_location(root)}/{name}" if database else None
        experiment_id = retry(lambda: c.create_experiment(name, artifact_location=location))
    else:
        experiment_id = experiment.experiment_id
    run = retry(lambda: c.create_run(experiment_id, run_name=name, tags={SEARCH_TAG: name, **tags}))
    log_params(c, run.info.run_id, params)
    for file_name, data in artifacts.items():
        retry(lambda f=file_name, d=data: c.log_dict(run.info.run_id, d, f))
    return experiment_id, run.info.run_id


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


class TrialRun:
    """The nested MLflow run of one trial, written through a :class:`~autoside.tune.journal.Journal`: a tracking
    server that is down delays the writes, never the trial. Used on the trial's worker, and by the driver to close
    the run of a trial whose worker could not (pruned, crashed). The run is known by its key until MLflow gives it an
    id (``run_id``)."""

    def __init__(self, journal: Journal, key: str) -> None:
        self.journal, self.key = journal, key
        self.last_step, self.last_stamp = 0, 0

    @property
    def run_id(self) -> str | None:
        return self.journal.ids.get(self.key)

    @classmethod
    def start(
        cls,
        journal: Journal,
        parent_run_id: str,
        *,
        number: int,
        trial_id: str,
        search: str,
        params: dict[str, Any],
        config: dict[str, Any],
    ) -> TrialRun:
        """Queue the run's creation, after deleting runs an earlier attempt of this trial left (its worker or node
        died and Ray ran it again), so that MLflow holds each trial once."""
        key = new_run_key()
        tags = {
            "mlflow.parentRunId": parent_run_id,
            TRIAL_NUMBER_TAG: str(number),
            SEARCH_TAG: search,
            "autoside.trial_id": trial_id,
            "family": str(config.get("family", "")),
            "status": "running",
        }
        journal.submit({"op": "delete_earlier", "run": key, "parent": parent_run_id, "number": number})
        journal.submit({"op": "create_run", "run": key, "name": f"trial-{trial_id}", "tags": tags, "time": now_ms()})
        params = {**{k: str(v) for k, v in params.items()}, **{f"sidenet.{k}": v for k, v in flat(config).items()}}
        journal.submit(log_op(key, params=params))
        return cls(journal, key)

    def log(self, metrics: dict[str, Any], *, tags: dict[str, str] | None = None) -> None:
        self.journal.submit(log_op(self.key, metrics=metrics, tags=tags))

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        op = log_op(self.key, metrics={k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)
        self.last_stamp, self.last_step = op["metrics"][0][2] if op["metrics"] else now_ms(), epoch
        self.journal.submit(op)

    def log_artifacts(self, folder: Path, path: str | None = None) -> None:
        self.journal.submit({"op": "artifacts", "run": self.key, "dir": str(folder), "path": path})

    def finish(
        self,
        status: str,
        metrics: dict[str, Any] | None = None,
        *,
        tags: dict[str, str] | None = None,
        artifacts_dir: Path | None = None,
    ) -> None:
        if metrics:
            final = {f"final_{k}" if k == "epoch" else k: v for k, v in metrics.items()}
            # At the last epoch's step and after it: MLflow's run table shows a metric's value at the highest step
            # (latest time among equal steps), so it shows the final figures (on CUDA the allocator peak).
            stamp = max(now_ms(), self.last_stamp + 1)
            self.journal.submit(log_op(self.key, metrics=final, step=self.last_step, stamp=stamp))
        if artifacts_dir is not None and Path(artifacts_dir).is_dir():
            self.log_artifacts(Path(artifacts_dir), "side_network")
        self.journal.submit(log_op(self.key, tags={"status": status, **(tags or {})}))
        mlflow_status = {"ok": "FINISHED", "infeasible": "FINISHED", "pruned": "KILLED"}.get(status, "FAILED")
        self.journal.submit({"op": "terminate", "run": self.key, "status": mlflow_status, "time": now_ms()})
