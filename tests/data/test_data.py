import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autoside.data import DatasetConfig, Preprocess, load_task, sources
from autoside.errors import ConfigError, DataError


def test_animal_mnist_reads_published_files_after_checksum():
    task = load_task(DatasetConfig(name="animal_mnist"))
    assert task.num_classes == 10
    assert task.train.images.shape == (800, 1, 28, 28) and task.train.images.dtype == torch.uint8
    assert (len(task.train), len(task.val), len(task.test)) == (800, 200, 9000)
    # VTAB-1k splits are disjoint: 10000 examples in all.
    assert len(task.train) + len(task.val) + len(task.test) == 10_000


def test_splits_are_identical_for_a_seed_and_differ_across_seeds():
    a, b = load_task(DatasetConfig(name="digits", seed=3)), load_task(DatasetConfig(name="digits", seed=3))
    c = load_task(DatasetConfig(name="digits", seed=4))
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.labels, c.train.labels)


def test_test_size_caps_the_test_split():
    task = load_task(DatasetConfig(name="digits", test_size=100))
    assert len(task.test) == 100


def test_animal_mnist_checksum_mismatch(tmp_path):
    spec = importlib.util.find_spec("animal_mnist")
    data_dir = Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal_MNIST"
    for name in sources.ANIMAL_MNIST_SHA256:
        shutil.copy(data_dir / name, tmp_path / name)
    target = tmp_path / "animal_label_version_3.gz"
    raw = bytearray(target.read_bytes())
    raw[-10] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="checksum mismatch"):
        load_task(DatasetConfig(name="animal_mnist", root=str(tmp_path)))


def test_missing_dataset_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_task(DatasetConfig(name="animal_mnist", root=str(tmp_path)))


def test_lfw_subset_needs_smaller_splits():
    with pytest.raises(ConfigError, match=r"train_size \+ dataset.val_size = 1000 but lfw_subset has only 200"):
        load_task(DatasetConfig(name="lfw_subset"))
    task = load_task(DatasetConfig(name="lfw_subset", train_size=100, val_size=50))
    assert task.classes == ("non_face", "face") and len(task.test) == 50


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    task = load_task(DatasetConfig(name="imagefolder", root=str(tmp_path), train_size=10, val_size=4), image_size=48)
    assert task.classes == ("cat", "dog")
    assert task.train.images.shape[1:] == (3, 48, 48)
    assert len(task.train) + len(task.val) + len(task.test) == 24


def test_image_folder_errors(tmp_path):
    with pytest.raises(ConfigError, match="dataset.root"):
        load_task(DatasetConfig(name="imagefolder"))
    with pytest.raises(DataError, match="is not a folder"):
        load_task(DatasetConfig(name="imagefolder", root=str(tmp_path / "missing")))
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png: not a readable image"):
        load_task(DatasetConfig(name="imagefolder", root=str(tmp_path)))


def test_torchvision_dataset_without_download_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"torchvision/CIFAR10: .*download"):
        load_task(DatasetConfig(name="torchvision/CIFAR10", root=str(tmp_path)))
    with pytest.raises(ConfigError, match="torchvision has no dataset 'NotADataset'"):
        load_task(DatasetConfig(name="torchvision/NotADataset", root=str(tmp_path)))


def test_torchvision_dataset_reads_local_files(tmp_path):
    # The real torchvision loader on MNIST-format IDX files written here (no download).
    import gzip
    import struct

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        images = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        with gzip.open(raw / f"{prefix}-images-idx3-ubyte.gz", "wb") as fh:
            fh.write(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        with gzip.open(raw / f"{prefix}-labels-idx1-ubyte.gz", "wb") as fh:
            fh.write(struct.pack(">II", 2049, n) + labels.tobytes())
        for name in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
            with gzip.open(raw / f"{name}.gz") as src:
                (raw / name).write_bytes(src.read())
    task = load_task(DatasetConfig(name="torchvision/MNIST", root=str(tmp_path), train_size=30, val_size=10))
    assert len(task.train) == 30 and len(task.test) == 20  # the official test split
    assert task.train.images.shape[1:] == (1, 28, 28)


def test_preprocess_gray_to_rgb_resize_normalise():
    prep = Preprocess(32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    images = torch.full((2, 1, 8, 8), 255, dtype=torch.uint8)
    out = prep(images)
    assert out.shape == (2, 3, 32, 32)
    assert torch.allclose(out, torch.ones_like(out))
