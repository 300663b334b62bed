"""Fashion-MNIST reader for the IDX files shipped by the Debian package ``dataset-fashion-mnist``.

autoside reads the raw gzip-compressed IDX files with numpy so that pretraining and benchmarks need no network
access and no dataset library.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
ENV_VAR = "AUTOSIDE_FASHION_MNIST"
_PREFIX = {"train": "train", "test": "t10k"}
_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Read one gzip-compressed IDX file, checking its magic number and declared size."""
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: bad IDX magic number 0x{found:08x}, expected 0x{magic:08x}")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise ValueError(f"{path}: expected {expected} payload bytes, found {len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def load_fashion_mnist(split: str = "train", root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, labels)`` for ``split`` in {"train", "test"}.

    Images are uint8 of shape (N, 28, 28), labels int64 of shape (N,). ``root`` defaults to the
    ``AUTOSIDE_FASHION_MNIST`` environment variable, then to the Debian package location.
    """
    if split not in _PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    base = Path(root or os.environ.get(ENV_VAR) or DEFAULT_ROOT)
    prefix = _PREFIX[split]
    img_path = base / f"{prefix}-images-idx3-ubyte.gz"
    lbl_path = base / f"{prefix}-labels-idx1-ubyte.gz"
    for path in (img_path, lbl_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"Fashion-MNIST file {path} not found: run `apt-get install dataset-fashion-mnist` "
                f"or set {ENV_VAR} to the folder holding the IDX .gz files"
            )
    images = _read_idx(img_path, _IMAGES_MAGIC, 3)
    labels = _read_idx(lbl_path, _LABELS_MAGIC, 1).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{base}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images.copy(), labels
