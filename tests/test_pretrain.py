"""Shipped backbone checkpoints are intact and loadable, and the pretraining code path still produces them."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from autoside.data.fashion_mnist import DEFAULT_ROOT, load_fashion_mnist
from autoside.pretrain import BACKBONES, pretrain

WEIGHTS = Path(__file__).resolve().parents[1] / "autoside" / "weights"
HAVE_FMNIST = (Path(DEFAULT_ROOT) / "train-images-idx3-ubyte.gz").is_file()
MAX_BYTES = 8 * 1024 * 1024


def _load_strict(sidecar: dict, weights: Path) -> torch.nn.Module:
    import timm
    from safetensors.torch import load_file

    model = timm.create_model(
        sidecar["timm_model"], pretrained=False, num_classes=sidecar["num_classes_pretrained"], **sidecar["timm_kwargs"]
    )
    model.load_state_dict(load_file(weights), strict=True)
    return model


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_shipped_checkpoint(name: str) -> None:
    sidecar = json.loads((WEIGHTS / f"{name}.json").read_text())
    weights = WEIGHTS / sidecar["file"]
    assert sidecar["name"] == name
    assert weights.stat().st_size <= MAX_BYTES
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == sidecar["sha256"]
    assert sidecar["timm_model"] == BACKBONES[name]["timm_model"]
    assert sidecar["timm_kwargs"] == BACKBONES[name]["timm_kwargs"]
    assert sidecar["data_config"]["input_size"] == [3, 28, 28]
    model = _load_strict(sidecar, weights)
    assert hasattr(model, sidecar["classifier"])
    assert model(torch.zeros(2, 3, 28, 28)).shape == (2, 10)
    assert sidecar["fashion_mnist_test_accuracy"] >= (0.85 if name.startswith("vit") else 0.90)


@pytest.mark.skipif(not HAVE_FMNIST, reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_reader() -> None:
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = load_fashion_mnist(split)
        assert images.shape == (n, 28, 28) and images.dtype.name == "uint8"
        assert labels.shape == (n,) and labels.dtype.name == "int64"
        assert set(labels.tolist()) == set(range(10))


def test_fashion_mnist_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist("train", root=str(tmp_path))


@pytest.mark.skipif(not HAVE_FMNIST, reason="Debian package dataset-fashion-mnist not installed")
@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_pretrain_smoke(arch: str, tmp_path: Path) -> None:
    kwargs = {"epochs": 1, "batch_size": 64, "train_subset": 256, "test_subset": 200, "log": False}
    sidecar = pretrain(arch, tmp_path, **kwargs)
    written = json.loads((tmp_path / f"{sidecar['name']}.json").read_text())
    assert written == json.loads(json.dumps(sidecar))
    weights = tmp_path / written["file"]
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == written["sha256"]
    assert 0.0 <= written["fashion_mnist_test_accuracy"] <= 1.0
    assert len(written["pretrain"]["history"]) == 1
    _load_strict(written, weights)
    assert not list(tmp_path.glob("*.tmp"))
    # Same seed, same thread count: the rerun writes a byte-identical checkpoint.
    assert pretrain(arch, tmp_path / "again", **kwargs)["sha256"] == written["sha256"]


def test_pretrain_command(tmp_path: Path) -> None:
    import subprocess
    import sys

    cmd = [
        sys.executable,
        "-m",
        "autoside.cli",
        "pretrain",
        "resnet",
        "--epochs",
        "1",
        "--train-subset",
        "128",
        "--threads",
        "1",
        "--out",
        str(tmp_path),
    ]
    if HAVE_FMNIST:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "resnet4s_fmnist.safetensors").is_file() and (tmp_path / "resnet4s_fmnist.json").is_file()
    missing = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "AUTOSIDE_FASHION_MNIST": str(tmp_path / "none")},
    )
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.startswith("autoside: error: ") and "dataset-fashion-mnist" in missing.stderr
