"""VTAB-1k-style splits: a fixed, seeded number of training and validation examples, the rest (or a capped,
seeded sample of it, or the dataset's official test split) for testing."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from autoside.data.files import FileImages, stream_batches
from autoside.data.sources import Images
from autoside.errors import ConfigError


@dataclass(frozen=True)
class Split:
    """Images (a uint8 tensor in memory, or :class:`FileImages` streamed from disk) and their labels."""

    images: torch.Tensor | FileImages
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def streamed(self) -> bool:
        return isinstance(self.images, FileImages)

    def batches(
        self, batch_size: int, order: torch.Tensor | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(images, labels)`` batches in ``order`` (default: as stored); the last one may be smaller."""
        order = torch.arange(len(self)) if order is None else order
        chunks = list(order.split(batch_size))
        if self.streamed:
            yield from stream_batches(self.images, self.labels, chunks)
            return
        for idx in chunks:
            yield self.images[idx], self.labels[idx]


def _take(images: torch.Tensor | FileImages, index: torch.Tensor) -> torch.Tensor | FileImages:
    return images.subset(index) if isinstance(images, FileImages) else images[index]


@dataclass(frozen=True)
class Task:
    """A dataset cut into train/val/test, ready for a trial."""

    name: str
    classes: tuple[str, ...]
    train: Split
    val: Split
    test: Split

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def modality(self) -> str:
        """``video`` when the examples are clips ``(N, T, C, H, W)``, else ``image`` (also for images streamed from
        files and for stored features, which only images have)."""
        images = getattr(self.train, "images", None)
        return "video" if getattr(images, "ndim", 4) == 5 else "image"


def vtab_split(data: Images, *, name: str, train_size: int, val_size: int, test_size: int | None, seed: int) -> Task:
    """The same seed always gives the same examples in the same order."""
    n = len(data.labels)
    pool = n if data.official_test is not None else n - 1
    if train_size + val_size > pool:
        raise ConfigError(
            f"dataset.train_size + dataset.val_size = {train_size + val_size} but {name} has only {n} examples "
            f"(allowed: at most {pool}{'' if data.official_test is not None else ', leaving some for test'})"
        )
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen)
    train_idx, val_idx = order[:train_size], order[train_size : train_size + val_size]
    if data.official_test is not None:
        test_images, test_labels = data.official_test.images, data.official_test.labels
        test_idx = torch.randperm(len(test_labels), generator=gen)
    else:
        test_images, test_labels = data.images, data.labels
        test_idx = order[train_size + val_size :]
    if test_size is not None:
        test_idx = test_idx[:test_size]
    classes = data.classes or tuple(str(i) for i in range(int(data.labels.max()) + 1))
    return Task(
        name=name,
        classes=classes,
        train=Split(_take(data.images, train_idx), data.labels[train_idx]),
        val=Split(_take(data.images, val_idx), data.labels[val_idx]),
        test=Split(_take(test_images, test_idx), test_labels[test_idx]),
    )
