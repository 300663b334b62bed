"""Nothing in the package is defined and never used (vulture, configured in pyproject.toml; framework entry points
listed in vulture_whitelist.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_no_dead_code() -> None:
    if shutil.which("vulture", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("vulture is not installed: pip install -e '.[test]'")
    done = subprocess.run(
        [str(Path(sys.executable).parent / "vulture")], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and not done.stdout.strip(), f"unused code:\n{done.stdout}{done.stderr}"
