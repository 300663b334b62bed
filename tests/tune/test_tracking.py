"""MLflow (real SQLite store): the run table shows a trial's final figures, not its last epoch's."""

from __future__ import annotations

from pathlib import Path


def test_final_metrics_win_over_the_epoch_series(tmp_path: Path) -> None:
    from autoside.tune import tracking

    uri = tracking.default_tracking_uri(tmp_path)
    experiment, parent = tracking.start_parent(uri, tmp_path, "x", params={}, tags={}, artifacts={})
    from autoside.tune.journal import Journal

    journal = Journal(uri, experiment)
    run = tracking.TrialRun.start(journal, parent, number=0, trial_id="0000", search="x", params={}, config={})
    # Per-epoch figures are the tracker's; the final one is the allocator peak (higher on CUDA), logged in the
    # same millisecond as the last epoch at worst.
    run.log_epoch(1, {"epoch": 1, "peak_memory_bytes": 100, "val_accuracy": 0.2})
    run.log_epoch(2, {"epoch": 2, "peak_memory_bytes": 200, "val_accuracy": 0.9})
    run.finish("ok", {"peak_memory_bytes": 300, "val_accuracy": 0.5, "epoch": 2})
    c = tracking.client(uri)
    shown = c.get_run(run.run_id).data.metrics  # what the run table shows
    assert shown["peak_memory_bytes"] == 300 and shown["val_accuracy"] == 0.5 and shown["final_epoch"] == 2
    history = c.get_metric_history(run.run_id, "peak_memory_bytes")
    assert sorted((m.step, m.value) for m in history) == [(1, 100), (2, 200), (2, 300)]
    found = c.search_runs([experiment], filter_string="metrics.peak_memory_bytes = 300")
    assert [r.info.run_id for r in found] == [run.run_id]
