import os

import numpy as np
import pytest
import torch
from PIL import Image

from autoside.detection.draw import PALETTE, draw_boxes, write_boxes_png
from autoside.errors import ConfigError


def test_boxes_are_drawn_in_their_class_colour_and_written_atomically(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    image = torch.zeros((1, 48, 64), dtype=torch.uint8)  # grey images are drawn in colour
    boxes = torch.tensor([[4.0, 6.0, 30.0, 40.0], [36.0, 10.0, 60.0, 20.0]])
    labels = torch.tensor([0, 2])
    path = write_boxes_png(
        tmp_path / "out.png", image, boxes, labels, ("cat", "dog", "bird"), torch.tensor([0.9, 0.25])
    )
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary file left behind
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # the user's umask, as every file autoside writes
    drawn = np.asarray(Image.open(path))
    assert drawn.shape == (48, 64, 3)
    for (x0, _, x1, y1), label in zip(boxes.int().tolist(), labels.tolist(), strict=True):
        colour = tuple(int(PALETTE[label][i : i + 2], 16) for i in (1, 3, 5))
        assert tuple(drawn[y1 - 1, (x0 + x1) // 2]) == colour  # the bottom edge
    assert (drawn[24, 15] == 0).all()  # inside the box: untouched


def test_draw_keeps_the_input_and_accepts_no_boxes():
    image = torch.full((3, 16, 16), 7, dtype=torch.uint8)
    out = draw_boxes(image, torch.zeros((0, 4)), torch.zeros(0, dtype=torch.int64), ("a",))
    assert torch.equal(out, image) and (image == 7).all()


def test_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="folder .*nowhere does not exist"):
        write_boxes_png(
            tmp_path / "nowhere" / "x.png",
            torch.zeros((3, 8, 8), dtype=torch.uint8),
            torch.zeros((0, 4)),
            torch.zeros(0, dtype=torch.int64),
            ("a",),
        )
