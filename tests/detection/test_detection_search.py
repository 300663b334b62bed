"""A tiny detection search through Ray, Optuna and MLflow on CPU: trials train detectors and score box mAP, and the
chosen trial exports as a detector."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autoside.testing import tiny_detection_recipe


@pytest.mark.ray
@pytest.mark.slow
def test_detection_search_end_to_end(tmp_path: Path, ray_cluster: None) -> None:
    import json

    import autoside
    from autoside.export.pick import export_trial

    space = {
        "name": "det_tiny",
        "families": {
            "linear": {},
            "cst": {
                "prune_ratio": {"type": "float", "low": 0.5, "high": 0.75, "step": 0.25},
                "gate": {"type": "categorical", "choices": ["mtc", "channel"]},
                "writes_back": False,
            },
        },
    }
    recipe = tiny_detection_recipe(epochs=1, sidenet={"name": "linear"})
    result = autoside.search(
        space, recipe, num_samples=2, max_concurrent=2, seed=0, root=str(tmp_path / "runs"), name="det"
    )
    assert {r.status for r in result.trials} == {"ok"}, [(r.status, r.metrics.get("reason")) for r in result.trials]
    for trial in result.trials:
        assert trial.metrics["task"] == "detection" and trial.metrics["metric"] == "map"
        assert 0.0 <= trial.metrics["val_accuracy"] <= trial.metrics["val_map_50"] <= 1.0
        assert trial.metrics["predicted_peak_bytes"] > 0  # the budget's dry steps ran the detection loss
    best = max(result.trials, key=lambda r: r.metrics["val_accuracy"])
    out, _ = export_trial("det", tmp_path / "export", trial=best.trial_id, root=str(tmp_path / "runs"))
    assert json.loads((out / "side_config.json").read_text())["task"] == "detection"
    detections = autoside.load(out).detect(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    assert len(detections) == 2 and {"boxes", "scores", "labels"} <= set(detections[0])
