"""The feature-cache benchmark stays runnable between full runs: its --quick in-process sections on a tiny ViT."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_epoch_section_writes_its_figures(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("cache_speedup", ROOT / "benchmarks" / "cache_speedup.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "figures.json"
    argv = ["--quick", "--skip", "losa", "--skip", "demo", "--skip", "meter", "--json", str(out)]
    bench.main([*argv, "--cache-dir", str(tmp_path)])
    figures = json.loads(out.read_text())
    epoch = figures["epoch"]
    # The timed trials read stored features without loading the backbone; every figure is a measured time.
    assert epoch["backbone_loaded"] is False
    assert all(epoch[k] > 0 for k in ("as_trained_s", "untracked_s", "ideal_s", "ratio"))
    assert "load average" in figures["load"]["start"] and "epoch" in figures["load"]
