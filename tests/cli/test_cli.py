"""The command line as a user meets it: one line per error, exit 2 for bad input, a result table otherwise."""

import json
import subprocess
import sys

import pytest
import yaml


def autoside(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "autoside.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.fixture
def recipe_path(tmp_path, tiny_recipe_dict):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**tiny_recipe_dict, "epochs": 1}))
    return path


def test_train_prints_accuracy_and_measured_memory(recipe_path):
    proc = autoside("train", str(recipe_path), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy" in proc.stdout and "peak training memory" in proc.stdout
    assert "live_tensor_tracker" in proc.stdout


def test_train_json(recipe_path):
    proc = autoside("train", str(recipe_path), "--json", "--set", "sidenet.name=full")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["family"] == "full" and result["peak_memory_bytes"] > 0


def test_train_grad_checkpointing_flag_is_timms_and_reaches_the_trial(tmp_path):
    from autoside.testing import tiny_search_recipe

    path = tmp_path / "dtl.yaml"
    path.write_text(yaml.safe_dump(tiny_search_recipe(train=32, val=16, test=16, sidenet={"name": "dtl"})))
    runs = {}
    for flags in ((), ("--grad-checkpointing",)):
        proc = autoside("train", str(path), "--json", "--no-cache", *flags)
        assert proc.returncode == 0, proc.stderr
        runs[flags] = json.loads(proc.stdout)
    plain, ckpt = runs[()], runs[("--grad-checkpointing",)]
    assert ckpt["history"][0]["train_loss"] == pytest.approx(plain["history"][0]["train_loss"], rel=1e-5)
    assert ckpt["peak_memory_bytes"] < plain["peak_memory_bytes"]
    assert ckpt["grad_checkpointing"] and not plain["grad_checkpointing"]
    refused = autoside(
        "train",
        str(path),
        "--grad-checkpointing",
        "--set",
        "sidenet.name=full",
        "--set",
        "backbone.name=resnet4s_fmnist",
    )
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "grad_checkpointing: backbone 'resnet4s_fmnist' has BatchNorm layers" in refused.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "memory_budget=4 gigs"], "memory_budget: cannot read '4 gigs'"),
        (["--set", "epochs=ten"], "epochs: expected an integer"),
        (["--set", "colour=red"], "colour: unknown key"),
        (["--set", "backbone.name=not_a_model"], "backbone.name: 'not_a_model' is not a timm model"),
        (
            [
                "--set",
                "image_size=30",
                "--set",
                "backbone.name=vit_tiny_patch16_224",
                "--set",
                "backbone.weights=random",
            ],
            "image_size: 30 is not divisible by the patch size 16",
        ),
        (["--sidenet", "nope"], "sidenet: unknown side network 'nope'"),
        (["--set", "dataset.name=imagefolder", "--set", "dataset.root=/nonexistent"], "/nonexistent is not a folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_code(recipe_path, tmp_path, args, message):
    proc = autoside("train", str(recipe_path), *args, cwd=tmp_path)
    assert proc.returncode in (1, 2)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autoside: error: ") and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == [recipe_path]  # nothing written


def test_usage_errors_exit_2(tmp_path):
    assert autoside("train", str(tmp_path / "missing.yaml")).returncode == 2
    assert autoside("train", str(tmp_path / "missing.yaml")).stderr.count("\n") == 1


def test_version_names_autoside_and_its_stack():
    from importlib import metadata

    proc = autoside("--version")
    assert proc.returncode == 0 and proc.stdout.count("\n") == 1, proc.stderr
    assert proc.stdout.startswith("autoside 0.1.0 (torch ")
    assert f"timm {metadata.version('timm')}" in proc.stdout and f"ray {metadata.version('ray')}" in proc.stdout


def test_listings():
    proc = autoside("backbones", "--json")
    assert proc.returncode == 0 and "tf_efficientnet_lite0" in json.loads(proc.stdout)
    proc = autoside("datasets", "--json")
    assert {"animal_mnist", "digits", "lfw_subset", "imagefolder", "torchvision"} <= set(json.loads(proc.stdout))
    proc = autoside("sidenets", "--json")
    assert {"linear", "full"} <= set(json.loads(proc.stdout)["families"])


def test_listings_filter_names_like_timm_and_describe_presets():
    listed = json.loads(autoside("sidenets", "dtl*", "--json").stdout)
    assert list(listed["families"]) == ["dtl"] and "written back" in listed["families"]["dtl"]
    assert set(listed["presets"]) == {
        "dtl_plus_vit12_fmnist",
        "dtl_plus_vit_b16",
        "dtl_swin_b",
        "dtl_vit12_fmnist",
        "dtl_vit_b16",
    }
    assert listed["presets"]["dtl_vit_b16"] == {
        "family": "dtl",
        "description": "Official ViT-B/16 VTAB recipe: r = 2, all 12 blocks tapped, M = 7, beta = 100, drop-path 0.1 "
        "(0.1 or 0.2 per task in the official scripts).",
    }
    text = autoside("sidenets", "side4video_*").stdout
    assert "side4video_vit_b16       side4video: CLIP ViT-B/16 as in the paper: s = 320" in text and "dtl" not in text
    assert list(json.loads(autoside("backbones", "*fmnist", "--json").stdout)) == ["resnet4s_fmnist", "vit12_fmnist"]
