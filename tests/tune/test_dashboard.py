"""``optuna-dashboard`` (installed with autoside) serves a search's Optuna study: started on 127.0.0.1 at a free
port on the study a (shrunk) demo search wrote, its API lists the study and its trials; stopped by its process id."""

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

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, deadline: float) -> dict:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.3)


@pytest.mark.ray
@pytest.mark.slow
def test_optuna_dashboard_serves_a_demo_search_study(tmp_path: Path, ray_cluster: None) -> None:
    """The README's demo search (its space and recipe, shrunk to seconds with the same overrides a user would pass
    to ``autoside search --set``), then the dashboard on the study that search wrote."""
    import autoside
    from autoside.recipe import load_recipe

    tiny = ["dataset.train_size=64", "dataset.val_size=32", "dataset.test_size=32", "epochs=1"]
    recipe = load_recipe(ROOT / "trials" / "demo.yaml", [*tiny, f"cache_dir={tmp_path / 'cache'}"])
    result = autoside.search(
        ROOT / "search_spaces" / "demo.yaml",
        recipe,
        num_samples=3,
        max_concurrent=1,
        root=str(tmp_path / "runs"),
        name="demo",
        progress=False,
        seed=0,
    )
    assert len(result.trials) == 3
    storage = f"sqlite:///{tmp_path / 'runs' / 'demo' / 'optuna.db'}"
    told = optuna.load_study(study_name=None, storage=storage)
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
        assert [s["study_name"] for s in studies] == [told.study_name]
        detail = _get(f"{base}/api/studies/{studies[0]['study_id']}", deadline)
        assert len(detail["trials"]) == len(told.trials) >= 3  # the trained ones, and any repeat told for them
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
