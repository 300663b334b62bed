"""The on-disk format of an export, in one place: file names, the format version, the hashes that tie side weights
to their backbone, and the reader of ``side_config.json``. :mod:`~autoside.export.save` writes it and
:mod:`~autoside.export.load` reads it; neither knows the other.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from autoside.backbones import Backbone
from autoside.errors import AutosideError

FORMAT_VERSION = 1
CONFIG_NAME = "side_config.json"
WEIGHTS_NAME = "side_model.safetensors"
CARD_NAME = "README.md"


class ExportError(AutosideError):
    """An export folder cannot be written, or a folder is not a readable autoside export."""


def backbone_state_sha256(backbone: Backbone) -> str:
    """sha256 over the backbone's frozen tensors (names, dtypes, shapes and bytes), whatever their source; for a
    backbone whose weights were not loaded (a cached trial's), the hash recorded when they were."""
    if not backbone.weights_loaded:
        if backbone.state_sha256 is None:
            raise ExportError(f"backbone {backbone.spec.name!r}: its weights are not loaded and their hash is unknown")
        return backbone.state_sha256
    trainable = {name for name, p in backbone.named_parameters() if p.requires_grad}
    digest = hashlib.sha256()
    for key, tensor in sorted(backbone.state_dict().items()):
        if key in trainable:
            continue
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_side_config(path: str | Path) -> dict[str, Any]:
    """The parsed ``side_config.json`` of an export folder, checked for the keys :func:`load` needs."""
    folder = Path(path)
    file = folder / CONFIG_NAME
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"{folder}: is a file; give the export folder (with {CONFIG_NAME} and {WEIGHTS_NAME})")
    if not folder.is_dir():
        raise ExportError(f"{folder}: not found (expected an export folder with {CONFIG_NAME} and {WEIGHTS_NAME})")
    if not file.is_file():
        raise ExportError(f"{folder}: not an autoside export ({CONFIG_NAME} is missing)")
    try:
        info = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise ExportError(f"{file}: expected a JSON object")
    version = info.get("format_version")
    if not isinstance(version, int):
        raise ExportError(f"{file}: format_version is missing or not an integer")
    if version > FORMAT_VERSION:
        raise ExportError(
            f"{file}: export format {version} was written by a newer autoside ({info.get('autoside_version')}); "
            f"this one reads format {FORMAT_VERSION}: upgrade autoside"
        )
    for key in ("family", "config", "backbone", "num_classes"):
        if key not in info:
            raise ExportError(f"{file}: required key {key!r} is missing")
    return info
