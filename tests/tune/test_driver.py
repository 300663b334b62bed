"""The driver's bookkeeping that needs no cluster: a trial Tune ran again after its worker died says so in its
record even when it could not reach the tracking server to replace its earlier run (which is how a trial counts
its restarts otherwise)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from autoside.tune.driver import Progress, _record
from autoside.tune.trial import RECORD_KEY, result_record


def test_a_rerun_trial_records_its_restarts_from_tune(tmp_path: Path) -> None:
    state = SimpleNamespace(path=tmp_path, recovered={}, outbox=None)
    callback = Progress(state).callback()
    trial = SimpleNamespace(trial_id="abc_00001")
    callback.on_trial_recover(iteration=3, trials=[trial], trial=trial)
    # The rerun's own record: it could not delete its first run (server down), so it counted no restart.
    record = result_record(
        number=1, params={}, config={}, status="ok", metrics={"val_accuracy": 0.5}, mlflow_run_id=None, restarts=0
    )
    _record(state, 1, "ok", {"trial_id": "abc_00001", RECORD_KEY: json.dumps(record)}, {})
    stored = json.loads((tmp_path / "trials" / "0001" / "result.json").read_text())
    assert stored["restarts"] == 1 and stored["metrics"] == {"val_accuracy": 0.5}
    # A trial that never died keeps what it counted itself.
    record = result_record(number=2, params={}, config={}, status="ok", metrics={}, mlflow_run_id=None, restarts=0)
    _record(state, 2, "ok", {"trial_id": "abc_00002", RECORD_KEY: json.dumps(record)}, {})
    assert json.loads((tmp_path / "trials" / "0002" / "result.json").read_text())["restarts"] == 0
