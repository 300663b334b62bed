"""``autoside export`` / ``autoside predict`` / ``--register`` end to end on a small search written by the real trial
code (:func:`autoside.tune.trial.execute_trial`, without Ray; records stored as the driver stores them): digits, the
offline EfficientNet-Lite0 at 32 px. Trial weights live in MLflow (``runs:/<run id>/side_network``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import autoside
from autoside.backbones import create_backbone
from autoside.cli.main import main
from autoside.errors import ConfigError, WeightsError
from autoside.export.format import CONFIG_NAME
from autoside.sidenets import list_families

NAME = "digits-mix"
PARAMS = [
    {"family": "linear", "linear/dropout": 0.0},
    {"family": "full"},
    {"family": "linear", "linear/dropout": 0.5},
]


RECIPE = {
    "name": "tiny",
    "dataset": {"name": "digits", "train_size": 64, "val_size": 32, "test_size": 64},
    "backbone": {"name": "tf_efficientnet_lite0"},
    "image_size": 32,
    "epochs": 1,
    "batch_size": 16,
    "lr": 0.01,
    "warmup_epochs": 0.5,
    "device": "cpu",
    "threads": 1,
}


def make_search(root: Path, name: str, space: dict, recipe: dict, params: list[dict]) -> list[dict]:
    """A search folder as ``autoside search`` leaves it, with each trial run by the real trial code (no Ray)."""
    from autoside.recipe import recipe_from_dict
    from autoside.tune import tracking
    from autoside.tune.outbox import store_record
    from autoside.tune.results import SEARCH_FILE
    from autoside.tune.space import space_from_dict
    from autoside.tune.trial import TrialContext, execute_trial

    space, recipe = space_from_dict(space).to_dict(), recipe_from_dict(recipe).to_dict()
    uri = tracking.default_tracking_uri(root)
    experiment_id, parent = tracking.start_parent(uri, root, name, params={}, tags={}, artifacts={})
    meta = {
        "name": name,
        "status": "finished",
        "space": space,
        "recipe": recipe,
        "options": {"objectives": ["accuracy", "memory"]},
        "budget_bytes": None,
        "tracking_uri": uri,
    }
    (root / name).mkdir(parents=True)
    (root / name / SEARCH_FILE).write_text(json.dumps(meta))
    ctx = TrialContext(
        name=name,
        space=space,
        recipe=recipe,
        budget_bytes=None,
        tracking_uri=uri,
        experiment_id=experiment_id,
        parent_run_id=parent,
    )
    return [store_record(root / name, execute_trial(ctx, number, p)) for number, p in enumerate(params)]


def trial_weights(record: dict | object) -> str:
    """Where a trial's weights are: its MLflow run's ``side_network`` artifact."""
    run_id = record["mlflow_run_id"] if isinstance(record, dict) else record.mlflow_run_id
    return f"runs:/{run_id}/side_network"


@pytest.fixture(scope="module")
def search_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from autoside.tune.trial import result_record, write_json_atomic

    root = tmp_path_factory.mktemp("runs")
    space = {
        "name": "mix",
        "families": {"linear": {"dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.5}}, "full": {}},
    }
    for record in make_search(root, NAME, space, RECIPE, PARAMS):
        assert record["status"] == "ok", record
    # A trial that did not fit: no weights.
    write_json_atomic(
        root / NAME / "trials" / "0003" / "result.json",
        result_record(
            number=3,
            params={"family": "full"},
            config={"family": "full", "version": 1},
            status="infeasible",
            metrics={"val_accuracy": 0.0, "peak_memory_bytes": 10**12},
            mlflow_run_id=None,
            reason="over budget",
        ),
    )
    return root


def _accepting_backbone(family: str) -> tuple[str, int]:
    from autoside.sidenets import create_sidenet

    # 64 px gives the tiny ViT 16 patch tokens, enough for the token ranks of the families' defaults.
    for name, size in (("vit_tiny_patch16_224", 64), ("resnet10t", 32)):
        try:
            create_sidenet(family, create_backbone(name, weights="random", image_size=size), 3)
            return name, size
        except ConfigError:
            continue
    pytest.fail(f"family {family!r} accepts neither a tiny ViT nor a ResNet")


@pytest.mark.parametrize("family", list_families())
def test_export_command_every_family(family: str, tmp_path: Path) -> None:
    """Every registered family goes through search -> export -> load, here on a random-weight backbone: the export
    rebuilds it from the recipe's seed as the trial did, and loading it back needs that backbone passed in (except
    for ``full``, whose export holds the backbone)."""
    backbone, size = _accepting_backbone(family)
    recipe = {**RECIPE, "backbone": {"name": backbone, "weights": "random"}, "image_size": size}
    (record,) = make_search(
        tmp_path / "runs", "fam", {"name": family, "families": {family: {}}}, recipe, [{"family": family}]
    )
    assert record["status"] == "ok", record
    assert main(["export", "fam", str(tmp_path / "out"), "--trial", "0", "--root", str(tmp_path / "runs")]) == 0

    def same_backbone():  # noqa: ANN202 - the recipe's seed gives the random backbone the trial had
        torch.manual_seed(0)
        return create_backbone(backbone, weights="random", image_size=size)

    if json.loads((tmp_path / "out" / CONFIG_NAME).read_text())["backbone_in_weights"]:
        loaded = autoside.load(tmp_path / "out")
    else:
        with pytest.raises(WeightsError, match="random weights"):
            autoside.load(tmp_path / "out")
        loaded = autoside.load(tmp_path / "out", backbone=same_backbone())
    uri = f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').resolve()}"
    trial = autoside.load(trial_weights(record), backbone=same_backbone(), tracking_uri=uri)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(loaded(x), trial(x))
    assert loaded.config.unresolved().to_dict() == record["config"]  # CST also stores the widths it resolved
    assert loaded.metrics["test_accuracy"] == record["metrics"]["test_accuracy"]


def _search(root: Path):  # noqa: ANN202
    from autoside.tune.results import open_search

    return open_search(NAME, root=root)


def _export(root: Path, out: Path, *args: str) -> int:
    return main(["export", NAME, str(out), "--root", str(root), *args])


def _exported_trial(out: Path) -> str:
    return json.loads((out / CONFIG_NAME).read_text())["extra"]["trial_id"]


def test_export_trial_fresh_process(search_root: Path, tmp_path: Path) -> None:
    """Acceptance: the export, loaded in a new interpreter, gives the trial model's logits and its test accuracy."""
    search = _search(search_root)
    record = search.trial(0)
    assert _export(search_root, tmp_path / "out", "--trial", "0") == 0
    assert record.artifact_dir is None  # not in the search folder: in the trial's MLflow run
    trial_model = autoside.load(trial_weights(record), tracking_uri=search.tracking_uri)  # what the trial saved
    from autoside.data import load_task

    task = load_task(search.recipe.dataset)
    images = task.test.images[:32]
    with torch.no_grad():
        torch.save({"images": images, "logits": trial_model(trial_model.preprocess(images))}, tmp_path / "ref.pt")
    script = textwrap.dedent(f"""
        import torch, autoside
        from autoside.data import load_task
        from autoside.recipe import recipe_from_dict
        from autoside.train import evaluate
        torch.set_num_threads(1)
        ref = torch.load({str(tmp_path / "ref.pt")!r})
        model = autoside.load({str(tmp_path / "out")!r})
        with torch.no_grad():
            assert torch.equal(model(model.preprocess(ref["images"])), ref["logits"])
        recipe = recipe_from_dict(model.info["extra"]["recipe"])
        acc = evaluate(model.sidenet, load_task(recipe.dataset).test, model.preprocess,
                       batch_size=recipe.eval_batch_size, device=torch.device("cpu"))
        print(acc, model.metrics["test_accuracy"])
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    acc, reported = map(float, proc.stdout.split())
    assert acc == reported == record.metrics["test_accuracy"]
    info = json.loads((tmp_path / "out" / CONFIG_NAME).read_text())
    assert info["extra"]["params"] == PARAMS[0] and info["extra"]["selected_by"] == "trial 0000"
    assert info["metrics"]["peak_memory_bytes"] == record.metrics["peak_memory_bytes"]
    assert info["metrics"]["device"] and info["backbone"]["sha256"] and info["classes"] == list(task.classes)
    assert "peak training memory" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize("trial", ["1", "0002"])
def test_export_every_family_of_the_search(search_root: Path, tmp_path: Path, trial: str) -> None:
    assert _export(search_root, tmp_path / "out", "--trial", trial) == 0
    search = _search(search_root)
    record = search.trial(int(trial))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        trial_model = autoside.load(trial_weights(record), tracking_uri=search.tracking_uri)
        assert torch.equal(autoside.load(tmp_path / "out")(x), trial_model(x))


def test_budget_picks_most_accurate_that_fits(search_root: Path, tmp_path: Path) -> None:
    trials = [r for r in _search(search_root).trials if r.status == "ok"]
    budget = sorted(r.memory for r in trials)[-1] - 1  # everything but the largest
    fits = [r for r in trials if r.memory <= budget]
    best = min(fits, key=lambda r: (-r.accuracy, r.memory, r.trial_id))
    assert _export(search_root, tmp_path / "out", "--budget", str(budget)) == 0
    assert _exported_trial(tmp_path / "out") == best.trial_id


def test_knee_is_deterministic(search_root: Path, tmp_path: Path) -> None:
    from autoside.tune.pareto import knee_point

    search = _search(search_root)
    expected = knee_point(search.pareto).trial_id
    assert _export(search_root, tmp_path / "a", "--knee") == 0
    assert _export(search_root, tmp_path / "b", "--knee") == 0
    assert _exported_trial(tmp_path / "a") == _exported_trial(tmp_path / "b") == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trial", "42"], "has no trial '42' (finished trials: 0000, 0001, 0002)"),
        (["--trial", "3"], "trial 0003 of search 'digits-mix' is infeasible: over budget"),
        (["--budget", "1KiB"], "no trial of search 'digits-mix' fits in 1 KiB; the smallest finished trial needs"),
        (["--budget", "lots"], "--budget: cannot read 'lots' as a size"),
    ],
)
def test_bad_choices(
    search_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    assert _export(search_root, tmp_path / "out", *args) != 0
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_unknown_search(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", "nope", str(tmp_path / "out"), "--trial", "0", "--root", str(tmp_path)]) == 1
    assert "no search named 'nope'" in capsys.readouterr().err


def test_existing_out_dir_needs_force(search_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "out").mkdir()
    assert _export(search_root, tmp_path / "out", "--trial", "0") == 1
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert _export(search_root, tmp_path / "out", "--trial", "0", "--force") == 1
    assert "not an export; not replaced" in capsys.readouterr().err
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
    (tmp_path / "out" / "notes.txt").unlink()
    assert _export(search_root, tmp_path / "out", "--trial", "0", "--force") == 0
    assert _exported_trial(tmp_path / "out") == "0000"


def _copy_search(search_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    shutil.copytree(search_root / NAME, root / NAME)
    return root


def test_replay_mismatch_refused(search_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _copy_search(search_root, tmp_path)
    result = root / NAME / "trials" / "0002" / "result.json"
    data = json.loads(result.read_text())
    data["params"]["linear/dropout"] = 0.0  # parameters that no longer give the recorded config
    result.write_text(json.dumps(data))
    assert _export(root, tmp_path / "out", "--trial", "2") == 1
    assert "does not give the config it trained" in capsys.readouterr().err


def _weights_on_disk(root: Path) -> Path:
    """Trial 0's weights put where searches before MLflow-only weights kept them (``trials/<id>/side_network``)."""
    from autoside.export.load import fetch_run_artifacts

    search = _search(root)
    local = root / NAME / "trials" / "0000"
    return fetch_run_artifacts(trial_weights(search.trial(0)), search.tracking_uri, local)


def test_old_search_folder_with_weights_on_disk_exports(
    search_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = _copy_search(search_root, tmp_path)
    assert _weights_on_disk(root).name == "side_network"
    # Read from the folder: the MLflow store named on the command line is empty and is not asked.
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    assert _export(root, tmp_path / "out", "--trial", "0", "--tracking-uri", empty) == 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(
            autoside.load(tmp_path / "out")(x),
            autoside.load(trial_weights(_search(root).trial(0)), tracking_uri=_search(root).tracking_uri)(x),
        )
    # Neither on disk nor in the store asked for: one line naming both.
    capsys.readouterr()
    assert _export(root, tmp_path / "out2", "--trial", "1", "--tracking-uri", empty) == 1
    err = capsys.readouterr().err
    assert "has no saved side network weights" in err and empty in err and len(err.strip().splitlines()) == 1


def test_edited_trial_weights_refused(search_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _copy_search(search_root, tmp_path)
    weights = _weights_on_disk(root) / "side_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    assert _export(root, tmp_path / "out", "--trial", "0") == 1
    assert "truncated, edited" in capsys.readouterr().err


def _pngs(tmp_path: Path, n: int = 3) -> list[str]:
    from PIL import Image

    from autoside.data import load_task
    from autoside.recipe import recipe_from_dict

    task = load_task(recipe_from_dict({"dataset": {"name": "digits", "train_size": 64, "val_size": 32}}).dataset)
    files = []
    for i in range(n):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(task.test.images[i, 0].numpy()).save(path)
        files.append(str(path))
    return files


def test_predict_command(search_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _export(search_root, tmp_path / "out", "--trial", "0") == 0
    files = _pngs(tmp_path)
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "out"), *files, "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith(files[0]) and lines[0].count(",") == 2
    assert main(["predict", str(tmp_path / "out"), *files, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    model = autoside.load(tmp_path / "out")
    from autoside.export.load import read_images

    top = model.topk(read_images(files, 32), k=5)
    assert [[d["label"] for d in r["top_k"]] for r in rows] == [[label for label, _ in t] for t in top]
    assert main(["predict", str(tmp_path / "out"), str(tmp_path / "missing.png")]) == 1
    assert "image file not found" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nowhere"), *files]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "out"), *files, "--device", "bogus"]) == 2  # a usage error
    assert "device: 'bogus' is not one of" in capsys.readouterr().err
    if not torch.cuda.is_available():  # a machine without CUDA: one line, not the driver's traceback
        assert main(["predict", str(tmp_path / "out"), *files, "--device", "cuda"]) == 2
        assert "no usable CUDA device" in capsys.readouterr().err


def test_register_and_load_from_registry(search_root: Path, tmp_path: Path) -> None:
    import base64

    import mlflow
    import numpy as np
    import pandas as pd

    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    out = tmp_path / "out"
    assert _export(search_root, out, "--trial", "0", "--register", "digits-linear", "--registry-uri", uri) == 0
    files = _pngs(tmp_path)
    model = autoside.load(out)
    from autoside.export.load import read_images

    batch = read_images(files, 32)
    expected = [t[0][0] for t in model.topk(batch, k=1)]
    mlflow.set_tracking_uri(uri)
    try:
        pyfunc = mlflow.pyfunc.load_model("models:/digits-linear/1")
        from_array = pyfunc.predict(batch.permute(0, 2, 3, 1).numpy())
        frame = pd.DataFrame({"image": [base64.b64encode(Path(f).read_bytes()).decode() for f in files]})
        from_files = pyfunc.predict(frame)
    finally:
        mlflow.set_tracking_uri(None)
    assert list(from_array["label"]) == expected == list(from_files["label"])
    assert np.allclose(np.stack(from_array["probabilities"]).sum(-1), 1.0, atol=1e-5)
    # The MLflow CLI, in this environment (no conda or virtualenv is created).
    (tmp_path / "input.json").write_text(json.dumps({"inputs": batch.permute(0, 2, 3, 1).tolist()}))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "predict",
            "-m",
            "models:/digits-linear/1",
            "-i",
            str(tmp_path / "input.json"),
            "-t",
            "json",
            "--env-manager",
            "local",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [row["label"] for row in json.loads(proc.stdout.strip().splitlines()[-1])["predictions"]] == expected


def test_pareto_command_formats_and_budget(search_root: Path, capsys: pytest.CaptureFixture) -> None:
    import csv
    import io

    from autoside.tune.pareto import knee_point, pareto_front

    search = _search(search_root)
    assert main(["pareto", NAME, "--root", str(search_root), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [row["trial_id"] for row in data["pareto"]] == [r.trial_id for r in search.pareto]
    assert [row["trial_id"] for row in data["pareto"] if row["knee"]] == [knee_point(search.pareto).trial_id]
    assert all(row["images_per_s"] > 0 for row in data["pareto"])

    # A budget leaves out every trial over it, and the knee is taken on what remains.
    budget = min(r.memory for r in search.pareto)
    assert main(["pareto", NAME, "--root", str(search_root), "--budget", str(budget), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    expected = pareto_front(search.trials, budget_bytes=budget)
    assert [row["trial_id"] for row in rows] == [r.trial_id for r in expected]
    assert all(int(row["peak_memory_bytes"]) <= budget for row in rows)

    assert main(["pareto", NAME, "--root", str(search_root), "--budget", "1KiB"]) == 1
    assert "no trial" in capsys.readouterr().err
