"""MLflow writes that survive a tracking store that is down: applied at once when it answers, kept in order when it
does not, replayed later without duplicates.

Every write is an *op*, a small JSON-able dict, so that what could not be sent can travel: from a trial's worker to
the driver inside the trial's record (Ray's result stream), and from the driver to the search folder (the record's
``mlflow_pending``, or ``mlflow_pending.json`` for the search's own writes) for a ``--resume`` to send. A replay is
idempotent: runs are named by a key tag (``autoside.run_key``) and created only when no run carries that key,
metrics carry their own step and timestamp (MLflow ignores a metric it already holds with the same key, value,
step and time), tags and params are set to the same values, artifacts overwrite the same files, and deleting a
trial's earlier runs spares the run with the current key.

An op the store refuses for a transient reason (connection refused, an HTTP 5xx, a locked SQLite database) stays
queued, together with every op after it; the queue is tried again after a growing pause (1 s to 30 s), so a trial
keeps training at full speed while the server is away.
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

RUN_KEY_TAG = "autoside.run_key"
TRIAL_NUMBER_TAG = "autoside.trial_number"
PARENT = "parent"  # the key of the search's parent run

_TRANSIENT = (
    "locked",
    "connection refused",
    "max retries exceeded",
    "connection aborted",
    "connection reset",
    "remote end closed",
    "timed out",
    "temporarily unavailable",
    "bad gateway",
    "service unavailable",
    "gateway timeout",
    "too many 5",
)


def transient(exc: BaseException) -> bool:
    """True for errors that go away when the tracking store comes back (not for a request it rejects)."""
    status = getattr(exc, "get_http_status_code", None)
    if callable(status):
        try:
            if int(status()) >= 500 and "INTERNAL_ERROR" not in str(getattr(exc, "error_code", "")):
                return True
        except (TypeError, ValueError):
            pass
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    text = str(exc).lower()
    return any(t in text for t in _TRANSIENT)


def mlflow_client(tracking_uri: str | None):  # noqa: ANN201 - mlflow is imported lazily
    """An MLflow client. MLflow's own HTTP retries (7, with a backoff reaching minutes) are cut to one, so that a
    server that is down is noticed at once: :func:`retry` waits a few seconds, a :class:`Journal` buffers."""
    import logging

    for name in ("mlflow", "alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in a command's one-line errors
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


def retry(fn: Callable[[], T], attempts: int = 8) -> T:
    """Run an MLflow call now, retrying with backoff (0.2 s doubling to 4 s, ~15 s in all) on transient errors.
    For calls whose answer is needed at once; writes that can wait go through a :class:`Journal`."""
    delay = 0.2
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - MlflowException, requests' or SQLAlchemy's errors
            if not transient(exc) or attempt == attempts - 1:
                raise
            time.sleep(delay)
            delay = min(4.0, delay * 2)
    raise AssertionError("unreachable")


def new_run_key() -> str:
    return uuid.uuid4().hex


def now_ms() -> int:
    return int(time.time() * 1000)


class Journal:
    """An ordered queue of MLflow ops for one experiment (see the module docstring).

    Args:
        tracking_uri: the MLflow store.
        experiment_id: the search's experiment (run keys are looked up in it).
        ops: ops left over from earlier (a record's ``mlflow_pending``), sent before new ones.
        ids: run key -> run id, as far as known (``parent`` for the search's parent run).
        base: the folder relative ``dir`` entries of artifact ops are under (the search folder).
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        *,
        ops: list[dict[str, Any]] | None = None,
        ids: dict[str, str] | None = None,
        base: Path | None = None,
    ) -> None:
        self.tracking_uri, self.experiment_id = tracking_uri, experiment_id
        self.pending: list[dict[str, Any]] = list(ops or [])
        self.ids: dict[str, str] = dict(ids or {})
        self.base = base
        self._client = None
        self._next_try, self._pause = 0.0, 1.0
        self.deleted = 0  # runs of earlier attempts deleted by ``delete_earlier``

    @property
    def client(self):  # noqa: ANN201 - MlflowClient, created on first use
        if self._client is None:
            self._client = mlflow_client(self.tracking_uri)
        return self._client

    def submit(self, op: dict[str, Any]) -> None:
        """Queue ``op`` and send what the store takes now (nothing while it is paused after a failure)."""
        self.pending.append(op)
        if time.monotonic() >= self._next_try:
            self.flush()

    def flush(self) -> bool:
        """Send queued ops in order until one fails transiently; True when the queue is empty."""
        while self.pending:
            try:
                self._apply(self.pending[0])
            except Exception as exc:  # noqa: BLE001 - MlflowException, requests' errors, SQLAlchemy's
                if not transient(exc):
                    raise
                self._next_try = time.monotonic() + self._pause
                self._pause = min(30.0, self._pause * 2)
                return False
            self.pending.pop(0)
        self._pause = 1.0
        return True

    def wait(self, timeout_s: float) -> bool:
        """Keep flushing for up to ``timeout_s`` seconds (the end of a search); True when everything was sent."""
        deadline = time.monotonic() + timeout_s
        while not self.flush():
            if time.monotonic() >= deadline:
                return False
            time.sleep(max(0.0, min(self._next_try - time.monotonic(), deadline - time.monotonic())))
        return True

    def run_id(self, key: str) -> str | None:
        """The run id behind a key: known, or found by its key tag (None: no such run in the store yet)."""
        if key not in self.ids:
            runs = self.client.search_runs(
                [self.experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'", max_results=1
            )
            if not runs:
                return None
            self.ids[key] = runs[0].info.run_id
        return self.ids[key]

    # -- ops -------------------------------------------------------------------------------------------------------
    def _apply(self, op: dict[str, Any]) -> None:
        kind, c = op["op"], self.client
        if kind == "create_run":
            if self.run_id(op["run"]) is None:
                tags = {**op["tags"], RUN_KEY_TAG: op["run"]}
                run = c.create_run(self.experiment_id, start_time=op["time"], tags=tags, run_name=op["name"])
                self.ids[op["run"]] = run.info.run_id
            return
        if kind == "delete_earlier":
            self._delete_earlier(op)
            return
        run_id = op.get("run_id") or self.run_id(op["run"])
        if run_id is None:  # its create_run was lost with a worker that died: nothing to write to
            return
        if kind == "log":
            self._log(run_id, op)
        elif kind == "artifacts":
            folder = Path(op["dir"]) if self.base is None else self.base / op["dir"]
            c.log_artifacts(run_id, str(folder), op.get("path"))
        elif kind == "artifact":
            c.log_artifact(run_id, str(Path(op["file"]) if self.base is None else self.base / op["file"]))
        elif kind == "terminate":
            c.set_terminated(run_id, op["status"], end_time=op["time"])
        elif kind == "reopen":
            c.update_run(run_id, status="RUNNING")
        elif kind == "delete_run":
            if c.get_run(run_id).info.lifecycle_stage != "deleted":
                c.delete_run(run_id)
        else:
            raise ValueError(f"unknown MLflow op {kind!r}")

    def _log(self, run_id: str, op: dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        metrics = [Metric(k, float(v), int(t), int(s)) for k, v, t, s in op.get("metrics", [])]
        params = [Param(k[:250], str(v)[:6000]) for k, v in op.get("params", {}).items()]
        tags = [RunTag(k, str(v)[:5000]) for k, v in op.get("tags", {}).items()]
        for i in range(0, max(len(metrics), len(params)), 100):
            self.client.log_batch(run_id, metrics=metrics[i : i + 100], params=params[i : i + 100])
        if tags:
            self.client.log_batch(run_id, tags=tags)

    def _delete_earlier(self, op: dict[str, Any]) -> None:
        """Delete runs of trial ``number`` other than the one keyed ``run`` (left by an attempt whose worker died;
        ``run`` None: all of them that started before ``before`` (ms), for a trial a resumed search runs again)."""
        query = f"tags.mlflow.parentRunId = '{op['parent']}' and tags.`{TRIAL_NUMBER_TAG}` = '{op['number']}'"
        for run in self.client.search_runs([self.experiment_id], filter_string=query, max_results=1000):
            if op.get("before") and run.info.start_time >= op["before"]:
                continue  # started after the op was queued: a newer attempt's run
            if op["run"] is None or run.data.tags.get(RUN_KEY_TAG) != op["run"]:
                self.client.delete_run(run.info.run_id)
                self.deleted += 1


# -- op builders ------------------------------------------------------------------------------------------------------
def log_op(
    run: str,
    *,
    metrics: dict[str, Any] | None = None,
    step: int = 0,
    stamp: int | None = None,
    params: dict[str, Any] | None = None,
    tags: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Numbers in ``metrics`` at ``step`` and ``stamp`` (ms, default now), fixed here so a replay repeats them."""
    stamp = stamp or now_ms()
    rows = [
        [k, float(v), stamp, step]
        for k, v in (metrics or {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    op: dict[str, Any] = {"op": "log", "run": run, "metrics": rows}
    if params:
        op["params"] = {k: str(v) for k, v in params.items()}
    if tags:
        op["tags"] = {k: str(v) for k, v in tags.items()}
    return op


def pack_artifacts(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ops with the files of local artifact folders inlined (base64), so they can leave this machine."""
    out = []
    for op in ops:
        if op["op"] == "artifacts" and "dir" in op:
            folder = Path(op["dir"])
            files = {
                str(f.relative_to(folder)): base64.b64encode(f.read_bytes()).decode()
                for f in sorted(folder.rglob("*"))
                if f.is_file()
            }
            op = {k: v for k, v in op.items() if k != "dir"} | {"files": files}
        out.append(op)
    return out


def unpack_artifacts(ops: list[dict[str, Any]], base: Path, folder: str) -> list[dict[str, Any]]:
    """The inverse of :func:`pack_artifacts`: inlined files written under ``base/folder/<artifact path>``, the ops
    pointing there (relative to ``base``)."""
    out = []
    for op in ops:
        if op["op"] == "artifacts" and "files" in op:
            rel = Path(folder) / (op.get("path") or "files")
            for name, data in op["files"].items():
                target = base / rel / name
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.tmp")
                tmp.write_bytes(base64.b64decode(data))
                tmp.replace(target)
            op = {k: v for k, v in op.items() if k != "files"} | {"dir": str(rel)}
        out.append(op)
    return out
