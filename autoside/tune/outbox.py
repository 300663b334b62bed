"""The driver's side of the search folder: it alone writes it, from the records trials send through Ray, and it
holds the MLflow writes the tracking store could not take yet until it can.

Unsent ops live where a restarted driver finds them: a trial's in its ``result.json`` (``mlflow_pending``, written
with the record in one atomic rename, so a trial is never recorded without them nor sent twice), the search's own
(Pareto tags, the parent run's artifacts and metrics, its end) in ``mlflow_pending.json``. Weights that came inlined
in a record are written to ``trials/<id>/side_network`` (where ``autoside export`` finds them even before MLflow
has them).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from autoside.tune.journal import PARENT, Journal, unpack_artifacts
from autoside.tune.results import RESULT_FILE
from autoside.tune.trial import PENDING_KEY, write_json_atomic

SEARCH_PENDING = "mlflow_pending.json"
# How long the end of a search waits for a tracking server that is down before leaving the writes to --resume.
WAIT_ENV = "AUTOSIDE_MLFLOW_WAIT_S"


def store_record(search_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write a trial's record to ``trials/<id>/result.json``; inlined weights go beside it. Returns what was written."""
    rel = f"trials/{record['trial_id']}"
    record = dict(record)
    if record.get(PENDING_KEY):
        record[PENDING_KEY] = unpack_artifacts(record[PENDING_KEY], search_dir, rel)
    else:
        record.pop(PENDING_KEY, None)
    write_json_atomic(search_dir / rel / RESULT_FILE, record)
    return record


class Outbox:
    """MLflow ops the driver holds (see the module docstring); :meth:`flush` sends them when the store answers."""

    def __init__(self, search_dir: Path, tracking_uri: str, experiment_id: str, parent_run_id: str) -> None:
        self.dir, self.uri, self.experiment_id = Path(search_dir), tracking_uri, experiment_id
        self.ids = {PARENT: parent_run_id}
        self.waiting = {
            f.parent.name for f in (self.dir / "trials").glob(f"*/{RESULT_FILE}") if PENDING_KEY in f.read_text()
        }
        self._next_try, self._pause = 0.0, 1.0

    def _journal(self, ops: list[dict[str, Any]]) -> Journal:
        return Journal(self.uri, self.experiment_id, ops=ops, ids=self.ids, base=self.dir)

    def trial_ops(self, trial_id: str) -> None:
        """A record with unsent ops was written for ``trial_id``: try to send them now."""
        self.waiting.add(trial_id)
        self.flush()

    def search_ops(self, ops: list[dict[str, Any]]) -> None:
        """Queue the search's own ops (persisted first) and try to send them."""
        write_json_atomic(self.dir / SEARCH_PENDING, {"ops": self._search_pending() + ops})
        self.flush(force=True)

    def _search_pending(self) -> list[dict[str, Any]]:
        file = self.dir / SEARCH_PENDING
        return json.loads(file.read_text())["ops"] if file.is_file() else []

    def pending(self) -> int:
        """Ops not sent yet."""
        count = len(self._search_pending())
        for trial_id in self.waiting:
            count += len(json.loads((self.dir / "trials" / trial_id / RESULT_FILE).read_text()).get(PENDING_KEY, []))
        return count

    def flush(self, *, force: bool = False) -> bool:
        """Send what is held, trials' ops first (the search's tag their runs); True when nothing is left. After a
        failure, calls within the growing pause (1 s to 30 s) return at once unless ``force``."""
        if not force and time.monotonic() < self._next_try:
            return False
        for trial_id in sorted(self.waiting):
            if not self._flush_trial(trial_id):
                return self._failed()
        ops = self._search_pending()
        if ops:
            journal = self._journal(ops)
            journal.flush()
            if journal.pending:
                write_json_atomic(self.dir / SEARCH_PENDING, {"ops": journal.pending})
                return self._failed()
            (self.dir / SEARCH_PENDING).unlink()
        self._pause = 1.0
        return True

    def wait(self, timeout_s: float | None = None) -> bool:
        """Keep flushing for up to ``timeout_s`` (default ``$AUTOSIDE_MLFLOW_WAIT_S`` or 120 s)."""
        timeout_s = float(os.environ.get(WAIT_ENV, 120)) if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while not self.flush(force=True):
            if time.monotonic() >= deadline:
                return False
            time.sleep(max(0.0, min(self._next_try, deadline) - time.monotonic()))
        return True

    def _failed(self) -> bool:
        self._next_try = time.monotonic() + self._pause
        self._pause = min(30.0, self._pause * 2)
        return False

    def _flush_trial(self, trial_id: str) -> bool:
        file = self.dir / "trials" / trial_id / RESULT_FILE
        record = json.loads(file.read_text())
        journal = self._journal(record.get(PENDING_KEY, []))
        done = journal.flush()
        record[PENDING_KEY] = journal.pending
        if done:
            del record[PENDING_KEY]
            record["mlflow_run_id"] = journal.ids.get(record.get("mlflow_run_key"), record.get("mlflow_run_id"))
            self.waiting.discard(trial_id)
        write_json_atomic(file, record)
        return done
