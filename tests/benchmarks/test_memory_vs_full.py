"""The memory table's rows run as labelled: a checkpointed row trains the same network in less memory."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _cells(markdown: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in markdown.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


def test_checkpointed_rows_keep_the_parameters_and_measure_less(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import memory_vs_full
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out = tmp_path / "table.md"
    only = ["dtl", "dtl (grad checkpointing)", "full (grad checkpointing)"]
    memory_vs_full.main(
        [
            "--backbone",
            "vit12_fmnist",
            "--image-size",
            "28",
            "--batch-size",
            "8",
            "--only",
            *only,
            "--markdown",
            str(out),
        ]
    )
    rows = _cells(out.read_text())
    assert set(rows) == {"full", *only}
    ratio = {label: float(cells[2]) for label, cells in rows.items()}  # "x full", measured in this run
    for label in ("dtl", "full"):
        plain, ckpt = rows[label], rows[f"{label} (grad checkpointing)"]
        assert plain[0] == ckpt[0]  # the same trainable parameters
        assert ratio[f"{label} (grad checkpointing)"] < ratio[label]
