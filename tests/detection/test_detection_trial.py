"""A detection trial end to end on the built-in pasted_objects task: the score is box mAP, the export records the
task and loads in a fresh process with identical boxes, ``autoside predict`` prints, writes JSON and draws boxes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from autoside.cli.main import main
from autoside.errors import ConfigError
from autoside.testing import tiny_detection_recipe

RECIPE = tiny_detection_recipe()


@pytest.fixture(scope="module")
def trained():
    from autoside.recipe import recipe_from_dict
    from autoside.train import run_trial

    recipe = recipe_from_dict(RECIPE)
    return recipe, *run_trial(recipe)


@pytest.fixture(scope="module")
def export_dir(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from autoside.data.pasted_objects import CLASSES
    from autoside.export.save import save_pretrained

    _, result, model = trained
    out = tmp_path_factory.mktemp("det") / "export"
    return save_pretrained(model, out, metrics=result.to_dict(), extra={"classes": list(CLASSES)})


def test_trial_scores_box_map(trained) -> None:
    _, result, model = trained
    assert (result.task, result.metric, result.family) == ("detection", "map", "cst")
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert all("val_map_50" in h for h in result.history)
    for value in (result.val_accuracy, result.test_accuracy, result.val_map_50, result.test_map_50):
        assert 0.0 <= value <= 1.0
    assert result.test_map_50 >= result.test_accuracy  # mAP@0.5 bounds mAP@[.5:.95] from above
    assert result.feature_cache["status"] == "bypassed"
    assert result.peak_memory_bytes > 0 and result.trainable_params == model.num_trainable()
    assert all(p.grad is None for p in model.backbone.parameters())


def test_a_checkpointed_detector_trains_the_same_losses(trained) -> None:
    """grad_checkpointing reaches the side network inside the detector: CST writing back recomputes the frozen stages
    its calibration flows through (the preset writes nothing back, so it has none on the gradient path)."""
    from autoside.recipe import recipe_from_dict
    from autoside.train import run_trial

    _, preset, _ = trained
    back = {
        **RECIPE,
        "sidenet": {"name": "cst_det_resnet4s_fmnist", "options": {"prune_ratio": 0.75, "writes_back": True}},
    }
    plain, _ = run_trial(recipe_from_dict(back))
    ckpt, _ = run_trial(recipe_from_dict({**back, "grad_checkpointing": True}))
    assert ckpt.grad_checkpointing and not plain.grad_checkpointing and not preset.grad_checkpointing
    losses = [h["train_loss"] for h in plain.history]
    assert [h["train_loss"] for h in ckpt.history] == pytest.approx(losses, rel=1e-4)
    assert ckpt.saved_activation_bytes < plain.saved_activation_bytes


def test_memory_prediction_runs_the_detection_loss(trained) -> None:
    from autoside.data import load_task
    from autoside.memory.predict import predict_peak_memory

    recipe, result, model = trained
    prediction = predict_peak_memory(model, load_task(recipe.dataset, image_size=64), recipe)
    assert abs(prediction.predicted_bytes / result.peak_memory_bytes - 1) < 0.25


def test_export_loads_in_a_fresh_process_with_identical_boxes(trained, export_dir: Path, tmp_path: Path) -> None:
    from autoside.data import Preprocess
    from autoside.data.pasted_objects import make_split

    _, _, model = trained
    info = json.loads((export_dir / "side_config.json").read_text())
    assert info["task"] == "detection" and info["detector"]["fpn_channels"] == 16
    card = (export_dir / "README.md").read_text()
    assert info["classes"][0] == "bird" and "test mAP@[.5:.95]" in card and card.startswith("# cst detector")
    images = make_split(4, test=True, size=64, seed=1, stream=2, prefix="x").images
    model.eval()
    with torch.no_grad():
        expected = model(Preprocess.from_data_config(model.backbone.spec.data_config)(images))
    assert sum(len(d["boxes"]) for d in expected) > 0  # something to compare (score threshold 0)
    torch.save({"images": images, "detections": expected}, tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import torch, autoside
        torch.set_num_threads(1)
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        model = autoside.load({str(export_dir)!r})
        got = model.detect(expected["images"])
        for g, e in zip(got, expected["detections"], strict=True):
            for key in ("boxes", "scores", "labels"):
                assert torch.equal(g[key], e[key]), (key, g[key], e[key])
        print("OK", sum(len(g["boxes"]) for g in got))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("OK")


def _png(path: Path, size: tuple[int, int]) -> Path:
    from PIL import Image

    from autoside.data.pasted_objects import make_split

    image = make_split(1, test=True, size=64, seed=2, stream=2, prefix="p").images[0]
    Image.fromarray(image.permute(1, 2, 0).numpy()).resize(size).save(path)
    return path


def test_predict_prints_boxes_json_and_draws(export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    image = _png(tmp_path / "scene.png", (96, 80))
    assert main(["predict", str(export_dir), str(image), "--min-score", "0"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"{image}: ") and "objects (score >= 0" in text
    assert main(["predict", str(export_dir), str(image), "--min-score", "0", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["width"] == 96 and rows[0]["height"] == 80
    found = rows[0]["detections"]
    assert found and {"label", "score", "box"} <= set(found[0])
    assert all(d["label"] in ("bird", "elephant", "giraffe", "digit_0", "digit_7") for d in found)
    assert all(0 <= d["box"][0] <= d["box"][2] <= 96 and 0 <= d["box"][1] <= d["box"][3] <= 80 for d in found)
    assert [d["score"] for d in found] == sorted((d["score"] for d in found), reverse=True)
    assert main(["predict", str(export_dir), str(image), "--min-score", "1"]) == 0
    assert "0 objects" in capsys.readouterr().out
    out = tmp_path / "boxes.png"
    assert main(["predict", str(export_dir), str(image), "--min-score", "0", "--draw", str(out)]) == 0
    with Image.open(out) as drawn, Image.open(image) as original:
        assert drawn.size == (96, 80)
        assert drawn.convert("RGB").tobytes() != original.convert("RGB").tobytes()


def test_predict_bad_input(export_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = _png(tmp_path / "scene.png", (64, 64))
    assert main(["predict", str(export_dir), str(image), "--min-score", "2"]) == 2
    assert capsys.readouterr().err.strip().endswith("--min-score: must be in [0, 1], got 2.0")
    assert main(["predict", str(export_dir), str(image), str(image), "--draw", str(tmp_path / "o.png")]) == 2
    assert "--draw: writes one picture" in capsys.readouterr().err
    assert main(["predict", str(export_dir), str(image), "--draw", str(tmp_path / "missing" / "o.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_detection_recipe_bad_input() -> None:
    from autoside.data import load_task
    from autoside.recipe import recipe_from_dict
    from autoside.train import build_model, train_model

    with pytest.raises(ConfigError, match=r"detector\.anchor_size: must be at least 1"):
        recipe_from_dict({**RECIPE, "detector": {"anchor_size": 0}})
    recipe = recipe_from_dict({**RECIPE, "augment": True})
    task = load_task(recipe.dataset, image_size=64)
    with pytest.raises(ConfigError, match=r"^augment: random crops and flips would move the images"):
        train_model(build_model(recipe, task.num_classes), task, recipe, device=torch.device("cpu"))
    vit = recipe_from_dict(
        {**RECIPE, "backbone": {"name": "vit12_fmnist"}, "sidenet": {"name": "linear"}, "image_size": 28}
    )
    with pytest.raises(ConfigError, match=r"^backbone\.name: detection needs a staged CNN backbone"):
        build_model(vit, 5)


def test_train_command_prints_box_map(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import yaml

    recipe = tmp_path / "det.yaml"
    recipe.write_text(yaml.safe_dump(tiny_detection_recipe(epochs=1)))
    assert main(["train", str(recipe), "--no-progress", "--set", "dataset.train_size=8"]) == 0
    out = capsys.readouterr().out
    assert "test mAP@[.5:.95]" in out and "test mAP@0.5" in out and "test accuracy" not in out


def test_registered_detector_gives_the_boxes_predict_gives(export_dir: Path, tmp_path: Path) -> None:
    """A detector registers as an MLflow pyfunc whose rows are each image's boxes in its own pixels, the same boxes
    ``autoside predict`` finds (from an array batch and from encoded files)."""
    import base64

    import mlflow
    import pandas as pd

    import autoside
    from autoside.export.load import read_images
    from autoside.export.mlflow_model import register

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    version = register(export_dir, "det", tracking_uri=uri)
    files = [_png(tmp_path / "a.png", (96, 80)), _png(tmp_path / "b.png", (64, 64))]
    expected = autoside.load(export_dir).detect_images([read_images([f], None)[0] for f in files])
    mlflow.set_tracking_uri(uri)
    try:
        pyfunc = mlflow.pyfunc.load_model(f"models:/det/{version.version}")
        frame = pd.DataFrame({"image": [base64.b64encode(Path(f).read_bytes()).decode() for f in files]})
        from_files = pyfunc.predict(frame)
        from_array = pyfunc.predict(read_images([files[1]], None).permute(0, 2, 3, 1).numpy())
    finally:
        mlflow.set_tracking_uri(None)
    assert list(from_files.columns) == ["boxes", "scores", "labels", "class_indices"] and len(from_files) == 2
    for row, want in zip(from_files.itertuples(), expected, strict=True):
        assert torch.allclose(torch.tensor(row.boxes).reshape(-1, 4), want["boxes"], atol=1e-4)
        assert row.scores == pytest.approx(want["scores"].tolist(), abs=1e-5)
        assert row.class_indices == want["labels"].tolist()
    assert expected[0]["boxes"].numel() and (expected[0]["boxes"][:, 2] <= 96).all()  # the 96 x 80 file's pixels
    assert torch.allclose(torch.tensor(from_array.boxes[0]).reshape(-1, 4), expected[1]["boxes"], atol=1e-4)
