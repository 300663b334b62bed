"""``optuna-dashboard`` (installed with autoside) serves a search's Optuna study: started on 127.0.0.1 at a free
port on a study written by the searcher over the demo space, its API lists the study and its trials."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from autoside.tune.space import load_space

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _demo_study(path: Path) -> str:
    """A study as a search writes it: the demo space sampled by the searcher, results told with the constraint."""
    from autoside.tune.sampler import AutosideOptunaSearch

    storage = f"sqlite:///{path}"
    searcher = AutosideOptunaSearch(
        load_space(ROOT / "search_spaces" / "demo.yaml"),
        objectives=("accuracy", "memory"),
        sampler=optuna.samplers.RandomSampler(seed=0),
        storage=optuna.storages.RDBStorage(storage),
        study_name="demo",
        budget_bytes=1000,
    )
    for i in range(3):
        searcher.suggest(f"t{i}")
        searcher.on_trial_complete(
            f"t{i}", {"autoside_status": "ok", "val_accuracy": 0.5 + i / 10, "peak_memory_bytes": 900}
        )
    return storage


def _get(url: str, deadline: float) -> dict:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.3)


def test_optuna_dashboard_serves_a_search_study(tmp_path: Path) -> None:
    storage = _demo_study(tmp_path / "optuna.db")
    exe = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent)) or shutil.which("optuna-dashboard")
    assert exe, "optuna-dashboard is not installed (it is a dependency of autoside)"
    port = _free_port()
    proc = subprocess.Popen(
        [exe, storage, "--host", "127.0.0.1", "--port", str(port), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        base, deadline = f"http://127.0.0.1:{port}", time.time() + 60
        studies = _get(f"{base}/api/studies", deadline)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["demo"]
        detail = _get(f"{base}/api/studies/{studies[0]['study_id']}", deadline)
        assert len(detail["trials"]) == 3
        assert {p["name"] for t in detail["trials"] for p in t["params"]} >= {"family"}
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def test_dependency_floors_match_the_apis_used() -> None:
    """``trial.set_constraint`` is Optuna 5, ``log_model(name=...)`` is MLflow 3; the dashboard is a dependency."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {d.split(">=")[0]: d.split(">=")[1] for d in deps if ">=" in d}
    assert int(floors["optuna"].split(".")[0]) >= 5
    assert int(floors["mlflow"].split(".")[0]) >= 3
    assert "optuna-dashboard" in floors
