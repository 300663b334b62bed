"""Images read from files at the size the recipe asks for, in memory when they fit and streamed when they do not.

A folder of 224 px photos must reach a 224 px backbone at 224 px: every image is decoded once, straight to the
recipe's size (antialiased resize of the original, never through a smaller intermediate). A dataset whose decoded
pixels exceed ``dataset.max_in_memory`` is not decoded up front: :class:`FileImages` keeps its paths and each batch
is decoded on demand, through a :class:`torch.utils.data.DataLoader` with ``dataset.workers`` worker processes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from autoside.errors import DataError

DEFAULT_IMAGE_SIZE = 224  # the input size of most timm backbones, used when a recipe leaves image_size to the model


def decode_image(path: str, size: int) -> torch.Tensor:
    """One image file as a uint8 ``(3, size, size)`` tensor, resized from the original in one step."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import pil_to_tensor

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BICUBIC, reducing_gap=None)
            return pil_to_tensor(img)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


def check_readable(path: str) -> None:
    """Read an image's header (cheap) so that a broken file fails before training, not in a worker mid-epoch."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


@dataclass(frozen=True)
class FileImages:
    """A lazily decoded image set: indexing decodes the selected files into a uint8 ``(n, 3, size, size)`` tensor."""

    paths: tuple[str, ...]
    size: int
    workers: int = 2

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), 3, self.size, self.size)

    def subset(self, index: torch.Tensor | Sequence[int]) -> FileImages:
        return FileImages(tuple(self.paths[i] for i in torch.as_tensor(index).tolist()), self.size, self.workers)

    def __getitem__(self, index: torch.Tensor | slice | Sequence[int]) -> torch.Tensor:
        chosen = self.paths[index] if isinstance(index, slice) else [self.paths[i] for i in torch.as_tensor(index)]
        if not chosen:
            return torch.empty((0, 3, self.size, self.size), dtype=torch.uint8)
        return torch.stack([decode_image(p, self.size) for p in chosen])


class _Files(torch.utils.data.Dataset):
    def __init__(self, images: FileImages, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return decode_image(self.images.paths[i], self.images.size), self.labels[i]


def stream_batches(
    images: FileImages, labels: torch.Tensor, batches: list[torch.Tensor]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Decode the given index batches in order, ``images.workers`` processes ahead of the consumer."""
    loader = torch.utils.data.DataLoader(
        _Files(images, labels),
        batch_sampler=[b.tolist() for b in batches],
        num_workers=images.workers,
        persistent_workers=False,
    )
    try:
        yield from loader
    except DataError as exc:
        # A file that passed the up-front check but does not decode (a truncated JPEG): a worker's error comes back
        # wrapped in its traceback; the user gets the original line, which names the file.
        last = str(exc).strip().splitlines()[-1]
        raise DataError(last.removeprefix(f"{DataError.__module__}.{DataError.__name__}: ")) from None
