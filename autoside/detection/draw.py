"""Boxes drawn onto an image (class names, and scores when given), written as a PNG that is never half-written."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import torch

from autoside.errors import ConfigError

PALETTE = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4")


def draw_boxes(
    image: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[str],
    scores: torch.Tensor | None = None,
    *,
    width: int = 2,
) -> torch.Tensor:
    """uint8 ``(3, H, W)`` copy of ``image`` (uint8, 1 or 3 channels) with each xyxy pixel box outlined in its
    class's colour and captioned ``name`` or ``name 0.87``."""
    from torchvision.utils import draw_bounding_boxes

    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    if len(boxes) == 0:
        return image.clone()  # torchvision would warn that it drew nothing
    labels = labels.tolist()
    captions = [classes[k] for k in labels]
    if scores is not None:
        captions = [f"{c} {s:.2f}" for c, s in zip(captions, scores.tolist(), strict=True)]
    colours = [PALETTE[k % len(PALETTE)] for k in labels]
    return draw_bounding_boxes(image, boxes.reshape(-1, 4).float(), captions, colors=colours, width=width)


def save_png(image: torch.Tensor, path: str | Path) -> Path:
    """Write a uint8 ``(3, H, W)`` image to ``path`` through a temporary file in the same folder and a rename."""
    from PIL import Image

    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: folder {path.parent} does not exist")
    # Not mkstemp, whose files are 0600: the picture gets the user's umask like every other file autoside writes.
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "xb") as fh:
            Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(fh, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_boxes_png(
    path: str | Path,
    image: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[str],
    scores: torch.Tensor | None = None,
) -> Path:
    """:func:`draw_boxes` then :func:`save_png`: the picture ``autoside predict`` writes for a detector."""
    return save_png(draw_boxes(image, boxes, labels, classes, scores), path)
