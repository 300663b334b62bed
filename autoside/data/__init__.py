"""Datasets and preprocessing; see :mod:`autoside.data.sources` for what is available offline."""

from __future__ import annotations

from dataclasses import dataclass

from autoside.data import coco, pasted_objects, video_tasks  # noqa: F401 - register detection and video datasets
from autoside.data.detection import DetectionTask
from autoside.data.sources import Images, list_datasets, register_dataset
from autoside.data.splits import Split, Task, vtab_split
from autoside.data.transforms import Preprocess
from autoside.data.video import ClipSampling
from autoside.errors import ConfigError
from autoside.units import parse_bytes

__all__ = [
    "DatasetConfig",
    "DetectionTask",
    "Images",
    "Preprocess",
    "Split",
    "Task",
    "list_datasets",
    "load_task",
    "register_dataset",
]


@dataclass(frozen=True)
class DatasetConfig:
    """Which data a trial uses and how it is split (VTAB-1k default: 800 train + 200 val).

    Video datasets also read ``frames`` (T per clip), ``frame_stride`` (unset: TSN segments; built-in tasks: 1),
    ``frame_size`` (frames are resized to it at decode time) and ``skip_bad_videos``.
    """

    name: str = "animal_mnist"
    root: str | None = None
    download: bool = False
    train_size: int = 800
    val_size: int = 200
    test_size: int | None = None
    seed: int = 0
    frames: int = 8
    frame_stride: int | None = None
    frame_size: int = 64
    skip_bad_videos: bool = False
    max_in_memory: str | int | None = "2GiB"
    workers: int = 2

    def __post_init__(self) -> None:
        base = self.name.split("/", 1)[0]
        if base not in list_datasets():
            raise ConfigError(f"dataset.name: unknown dataset {self.name!r} (allowed: {', '.join(list_datasets())})")
        if base == "torchvision" and "/" not in self.name:
            raise ConfigError("dataset.name: write torchvision/<DatasetClass>, e.g. torchvision/CIFAR10")
        for field in ("train_size", "val_size"):
            if getattr(self, field) < 1:
                raise ConfigError(f"dataset.{field}: must be at least 1, got {getattr(self, field)}")
        if self.test_size is not None and self.test_size < 1:
            raise ConfigError(f"dataset.test_size: must be at least 1 or null (all), got {self.test_size}")
        if self.frames < 1:
            raise ConfigError(f"dataset.frames: must be at least 1, got {self.frames}")
        if self.frame_stride is not None and self.frame_stride < 1:
            raise ConfigError(
                f"dataset.frame_stride: must be at least 1 or null (TSN segments), got {self.frame_stride}"
            )
        if self.frame_size < 8:
            raise ConfigError(f"dataset.frame_size: must be at least 8 pixels, got {self.frame_size}")
        if self.workers < 0:
            raise ConfigError(f"dataset.workers: must be at least 0, got {self.workers}")
        parse_bytes(self.max_in_memory, field="dataset.max_in_memory")


def load_task(cfg: DatasetConfig, *, image_size: int | None = None) -> Task | DetectionTask:
    """Read the dataset and cut its seeded splits; image files are decoded at ``image_size`` (the recipe's).

    Detection datasets (``list_datasets()[name].detection``) return a :class:`DetectionTask` (``kind ==
    "detection"``), every image at one size."""
    base, _, sub = cfg.name.partition("/")
    info = list_datasets()[base]
    loader = info.loader
    if info.detection:
        return loader(
            root=cfg.root,
            name=cfg.name,
            image_size=image_size,
            train_size=cfg.train_size,
            val_size=cfg.val_size,
            test_size=cfg.test_size,
            seed=cfg.seed,
            max_in_memory=parse_bytes(cfg.max_in_memory, field="dataset.max_in_memory"),
        )
    if info.video:
        sampling = ClipSampling(frames=cfg.frames, frame_stride=cfg.frame_stride, frame_size=cfg.frame_size)
        return loader(
            root=cfg.root,
            name=cfg.name,
            sampling=sampling,
            train_size=cfg.train_size,
            val_size=cfg.val_size,
            test_size=cfg.test_size,
            seed=cfg.seed,
            skip_bad=cfg.skip_bad_videos,
        )
    if base == "torchvision":
        data = loader(root=cfg.root, dataset=sub, download=cfg.download)
    elif base == "imagefolder":
        limit = parse_bytes(cfg.max_in_memory, field="dataset.max_in_memory")
        data = loader(root=cfg.root, image_size=image_size, max_in_memory=limit, workers=cfg.workers)
    else:
        data = loader(root=cfg.root)
    return vtab_split(
        data, name=cfg.name, train_size=cfg.train_size, val_size=cfg.val_size, test_size=cfg.test_size, seed=cfg.seed
    )
