"""MLflow writes through a tracking server that goes away (a real ``mlflow server`` on 127.0.0.1, stopped and started
again): buffered without slowing the writer, carried as JSON (weights inlined) to another process, sent when the
server is back, and sent again without duplicating anything."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from autoside.tune.journal import Journal, mlflow_client, pack_artifacts, transient, unpack_artifacts
from autoside.tune.loopback import MlflowServer
from autoside.tune.tracking import TrialRun


class Recording(Journal):
    """A journal that also keeps every op it was given, to replay them all afterwards."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.given: list[dict] = []

    def submit(self, op: dict) -> None:
        self.given.append(op)
        super().submit(op)


def test_transient_errors() -> None:
    assert transient(ConnectionRefusedError(111, "Connection refused"))
    assert transient(RuntimeError("(sqlite3.OperationalError) database is locked"))
    assert transient(RuntimeError("API request to http://h/api failed: Max retries exceeded with url (Caused by 503)"))
    assert not transient(ValueError("Changing param values is not allowed"))


@pytest.mark.slow
def test_outage_is_buffered_then_sent_once_and_replays_are_idempotent(tmp_path: Path) -> None:
    server = MlflowServer(tmp_path / "server")
    server.start()
    try:
        client = mlflow_client(server.uri)
        experiment = client.create_experiment("j")
        parent = client.create_run(experiment).info.run_id
        worker = Recording(server.uri, experiment)
        run = TrialRun.start(worker, parent, number=0, trial_id="0000", search="j", params={"lr": 0.1}, config={})
        run.log_epoch(1, {"epoch": 1, "val_accuracy": 0.5})
        assert not worker.pending  # the server is up: sent at once
        server.stop()
        started = time.monotonic()
        run.log_epoch(2, {"epoch": 2, "val_accuracy": 0.7})
        weights = tmp_path / "side_network"
        weights.mkdir()
        (weights / "side_model.safetensors").write_bytes(b"weights")
        run.finish("ok", {"val_accuracy": 0.7, "epoch": 2}, artifacts_dir=weights)
        assert len(worker.pending) == 5 and time.monotonic() - started < 15  # queued, the writer not held up
        # The unsent ops leave the worker as JSON with the weights inlined; the driver keeps them in its folder.
        shipped = json.loads(json.dumps(pack_artifacts(worker.pending)))
        (weights / "side_model.safetensors").unlink()
        driver_dir = tmp_path / "search"
        held = unpack_artifacts(shipped, driver_dir, "trials/0000")
        assert (driver_dir / "trials/0000/side_network/side_model.safetensors").read_bytes() == b"weights"
        driver = Journal(server.uri, experiment, ops=held, base=driver_dir)
        assert not driver.flush()  # still down
        server.start()
        assert driver.wait(60) and not driver.pending
        # Everything once more, as a driver restarted after a kill would send it: nothing doubles.
        (weights / "side_model.safetensors").write_bytes(b"weights")
        assert Journal(server.uri, experiment, ops=worker.given).flush()
        runs = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
        assert len(runs) == 1
        (trial,) = runs
        history = client.get_metric_history(trial.info.run_id, "val_accuracy")
        assert sorted((m.step, m.value) for m in history) == [(1, 0.5), (2, 0.7), (2, 0.7)]  # epochs + final
        assert trial.data.tags["status"] == "ok" and trial.info.status == "FINISHED"
        assert trial.data.params["lr"] == "0.1" and trial.data.metrics["final_epoch"] == 2
        assert [a.path for a in client.list_artifacts(trial.info.run_id, "side_network")] == [
            "side_network/side_model.safetensors"
        ]
    finally:
        server.stop()
