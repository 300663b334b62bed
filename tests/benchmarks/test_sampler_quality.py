"""``benchmarks/sampler_quality.py`` runs end to end on a tiny recipe: every configuration a sampler proposes is
trained for real and kept in the table, and the figures it prints come from those trainings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_sampler_quality_runs_and_reports_from_its_table(tmp_path: Path) -> None:
    table, out = tmp_path / "table.json", tmp_path / "out.json"
    tiny = ["dataset.train_size=64", "dataset.val_size=32", "dataset.test_size=32", "epochs=1", "threads=1"]
    args = ["--trials", "3", "--seeds", "2", "--samplers", "auto,random", "--table", str(table), "--json", str(out)]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sampler_quality.py"), *args, *(f"--set={s}" for s in tiny)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(table.read_text())
    result = json.loads(out.read_text())
    assert 1 <= len(rows) <= 12 and result["configurations_in_table"] == len(rows)
    assert all(r["status"] in ("ok", "infeasible") and r["peak_memory_bytes"] > 0 for r in rows.values())
    for name in ("auto", "random"):
        hv = result["samplers"][name]["all"]
        assert len(hv) == 2 and all(0.0 <= v <= result["best_front_of_table"] + 1e-9 for v in hv)
    assert "lead_in_random_stdevs" in result["samplers"]["auto"]
