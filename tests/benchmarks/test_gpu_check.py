"""The prepared GPU check stays correct between GPU runs: its --dry-run runs every step on the CPU and writes the
report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.ray
def test_gpu_check_dry_run_writes_every_section(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    [report] = tmp_path.glob("gpu-*-dry-run.md")
    text = report.read_text()
    for section in ("## 1. Training memory", "## 2. Memory prediction", "## 3. A 2-trial search", "## 4. Training"):
        assert section in text
    from autoside.sidenets import list_families

    for family in list_families():
        assert f"| {family} |" in text
    assert "concurrency reached:" in text and "requeued after a share overrun: 0" in text
