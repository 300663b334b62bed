"""Datasets autoside can read offline, by name.

Each loader returns every labelled image it has as a uint8 tensor ``(N, C, H, W)`` plus int64 labels and class
names; :mod:`autoside.data.splits` cuts the VTAB-1k-style train/val/test splits from that. Nothing is downloaded
unless the user asks (``download: true`` for torchvision datasets).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from autoside.errors import ConfigError, DataError

if TYPE_CHECKING:
    from autoside.data.files import FileImages


@dataclass(frozen=True)
class Images:
    """All labelled images of a dataset (in memory, or streamed from files when they do not fit)."""

    images: torch.Tensor | FileImages  # uint8 (N, C, H, W), or files decoded on demand
    labels: torch.Tensor  # int64 (N,)
    classes: tuple[str, ...]
    official_test: Images | None = None


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    loader: Callable[..., Images]
    needs_root: bool = False
    video: bool = False  # the loader takes the clip options and returns a split Task (see autoside.data.video)
    detection: bool = False  # the loader takes the image size and split sizes and returns a DetectionTask


_DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(
    name: str, description: str, *, needs_root: bool = False, video: bool = False, detection: bool = False
):
    def wrap(fn: Callable[..., Images]) -> Callable[..., Images]:
        _DATASETS[name] = DatasetInfo(name, description, fn, needs_root, video, detection)
        return fn

    return wrap


def list_datasets() -> dict[str, DatasetInfo]:
    return dict(_DATASETS)


def _as_images(array: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> Images:
    x = torch.from_numpy(np.ascontiguousarray(array))
    if x.ndim == 3:
        x = x.unsqueeze(1)
    return Images(x.to(torch.uint8), torch.from_numpy(np.asarray(labels)).long(), classes)


# Animal-MNIST 0.4 (PyPI ``animal-mnist``): the sha256 of its two gzip'd pickles, checked before unpickling.
ANIMAL_MNIST_SHA256 = {
    "animal_data_version_3.gz": "68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce",
    "animal_label_version_3.gz": "dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57",
}
ANIMAL_MNIST_CLASSES = tuple(f"animal_{i}" for i in range(10))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@register_dataset("animal_mnist", "Animal-MNIST: 10 animal silhouette classes x 1000, 28x28 gray (PyPI animal-mnist)")
def load_animal_mnist(root: str | None = None) -> Images:
    if root is None:
        spec = importlib.util.find_spec("animal_mnist")
        if spec is None or not spec.submodule_search_locations:
            raise DataError(
                "dataset animal_mnist: package not installed; run `pip install --no-deps animal-mnist==0.4`"
            )
        root = str(Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal_MNIST")
    arrays = {}
    for name, digest in ANIMAL_MNIST_SHA256.items():
        path = Path(root) / name
        if not path.is_file():
            raise DataError(
                f"dataset animal_mnist: {path} not found; reinstall with `pip install --no-deps animal-mnist==0.4`"
            )
        if _sha256(path) != digest:
            raise DataError(
                f"dataset animal_mnist: checksum mismatch for {path}; the file is corrupt or not version 0.4"
            )
        # Safe to unpickle only because the bytes are exactly the published ones (checked above).
        with gzip.open(path, "rb") as fh:
            arrays[name] = np.asarray(pickle.load(fh))
    return _as_images(arrays["animal_data_version_3.gz"], arrays["animal_label_version_3.gz"], ANIMAL_MNIST_CLASSES)


@register_dataset("digits", "scikit-learn digits: 10 classes, 1797 images, 8x8 gray")
def load_digits_dataset(root: str | None = None) -> Images:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)
    return _as_images(images, digits.target, tuple(str(i) for i in range(10)))


@register_dataset("lfw_subset", "scikit-image LFW subset: faces vs non-faces, 200 images, 25x25 gray")
def load_lfw_subset(root: str | None = None) -> Images:
    from skimage import data as skdata

    images = (skdata.lfw_subset() * 255).round().astype(np.uint8)
    labels = np.array([1] * 100 + [0] * 100)  # the first 100 are faces, the last 100 are not
    return _as_images(images, labels, ("non_face", "face"))


@register_dataset("fashion_mnist", "Fashion-MNIST: 10 classes, 60k train + 10k test, 28x28 gray (Debian)")
def load_fashion_mnist_dataset(root: str | None = None) -> Images:
    from autoside.data.fashion_mnist import load_fashion_mnist

    try:
        train = load_fashion_mnist("train", root)
        test = load_fashion_mnist("test", root)
    except FileNotFoundError as exc:
        raise DataError(f"dataset fashion_mnist: {exc}") from None
    classes = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
    return Images(*_pair(train), classes, official_test=_as_images(*test, classes))


def _pair(arrays: tuple[np.ndarray, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    images = _as_images(arrays[0], arrays[1], ())
    return images.images, images.labels


@register_dataset("imagefolder", "image folder: ROOT/<class>/<image>, one subfolder per class", needs_root=True)
def load_image_folder(
    root: str | None = None, image_size: int | None = None, max_in_memory: int | None = None, workers: int = 2
) -> Images:
    """Every image decoded once at ``image_size`` (the recipe's); streamed from disk when the decoded set would
    take more than ``max_in_memory`` bytes (see :mod:`autoside.data.files`)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from autoside.data.files import DEFAULT_IMAGE_SIZE, FileImages, check_readable, decode_image

    if root is None:
        raise ConfigError("dataset.root: the imagefolder dataset needs root: PATH (one subfolder per class)")
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"dataset.root: {base} is not a folder")
    classes = tuple(sorted(p.name for p in base.iterdir() if p.is_dir()))
    if len(classes) < 2:
        raise DataError(f"dataset.root: {base} needs at least two class subfolders, found {len(classes)}")
    paths, labels = [], []
    for index, name in enumerate(classes):
        for path in sorted((base / name).rglob("*")):
            if path.suffix.lower() in IMG_EXTENSIONS:
                paths.append(str(path))
                labels.append(index)
    if not paths:
        raise DataError(f"dataset.root: no images under {base}")
    size = image_size or DEFAULT_IMAGE_SIZE
    label_tensor = torch.tensor(labels)
    if max_in_memory is not None and len(paths) * 3 * size * size > max_in_memory:
        for path in paths:
            check_readable(path)
        return Images(FileImages(tuple(paths), size, workers), label_tensor, classes)
    return Images(torch.stack([decode_image(p, size) for p in paths]), label_tensor, classes)


@register_dataset(
    "torchvision", "a torchvision dataset by name (name: torchvision/CIFAR10), root + download", needs_root=True
)
def load_torchvision(root: str | None = None, dataset: str = "", download: bool = False) -> Images:
    import torchvision.datasets as tvd

    cls = getattr(tvd, dataset, None)
    if cls is None or not isinstance(cls, type):
        raise ConfigError(f"dataset.name: torchvision has no dataset {dataset!r} (e.g. torchvision/CIFAR10)")
    if root is None:
        raise ConfigError(f"dataset.root: torchvision/{dataset} needs root: PATH (add download: true to fetch it)")

    def read(train: bool) -> Images:
        try:
            ds = cls(root=root, train=train, download=download)
        except RuntimeError as exc:
            raise DataError(f"dataset torchvision/{dataset}: {str(exc).splitlines()[0]} (root {root})") from None
        data = np.asarray(ds.data)
        if data.ndim == 4 and data.shape[-1] in (1, 3):
            data = data.transpose(0, 3, 1, 2)
        return _as_images(data, np.asarray(ds.targets), tuple(getattr(ds, "classes", ())))

    train, test = read(True), read(False)
    return Images(train.images, train.labels, train.classes, official_test=test)
