"""Image folders at the recipe's resolution, streamed from disk when too large, and optional augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from autoside.data import DatasetConfig, Preprocess, load_task
from autoside.data.files import FileImages
from autoside.data.transforms import RandomResizedCropFlip
from autoside.errors import DataError


def _checkerboard(size: int, phase: int) -> np.ndarray:
    """One-pixel black/white squares: detail that any downscaling to 64 px averages to flat gray."""
    yy, xx = np.mgrid[:size, :size]
    board = ((yy + xx + phase) % 2 * 255).astype(np.uint8)
    return np.repeat(board[:, :, None], 3, axis=2)


def _folder(root, size: int = 224, per_class: int = 6):  # noqa: ANN001, ANN202
    for label, cls in enumerate(("a", "b")):
        (root / cls).mkdir()
        for i in range(per_class):
            Image.fromarray(_checkerboard(size, (label + i) % 2)).save(root / cls / f"{i}.png")
    return root


def test_a_224_px_folder_reaches_a_224_px_backbone_at_224_px(tmp_path):
    original = torch.from_numpy(_checkerboard(224, 0)).permute(2, 0, 1)
    task = load_task(
        DatasetConfig(name="imagefolder", root=str(_folder(tmp_path)), train_size=8, val_size=2), image_size=224
    )
    assert task.train.images.shape[1:] == (3, 224, 224)
    found = [img for img in task.train.images if torch.equal(img, original)]
    assert found, "the 224 px checkerboard was not kept pixel for pixel"
    # What the backbone sees: unchanged by the 224 px preprocess, so the one-pixel detail is still there.
    x = Preprocess(224, mean=(0.5,) * 3, std=(0.5,) * 3)(found[0][None])
    assert x.shape == (1, 3, 224, 224) and x.abs().min() > 0.99
    # Through 64 px (what a fixed decode size would do) the detail is gone: flat gray.
    via64 = Preprocess(224, mean=(0.5,) * 3, std=(0.5,) * 3)(Preprocess(64, (0.0,) * 3, (1 / 255,) * 3)(found[0][None]))
    assert via64.abs().max() < 0.1


def test_large_folder_is_streamed_with_workers_and_matches_memory(tmp_path):
    root = str(_folder(tmp_path, size=32))
    cfg = dict(name="imagefolder", root=root, train_size=8, val_size=2, workers=1)
    in_memory = load_task(DatasetConfig(**cfg), image_size=32)
    streamed = load_task(DatasetConfig(**cfg, max_in_memory=1000), image_size=32)  # 12 images x 3 KiB: too large
    assert isinstance(streamed.train.images, FileImages) and not in_memory.train.streamed
    order = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    pairs = zip(in_memory.train.batches(3, order), streamed.train.batches(3, order), strict=True)
    for (xa, ya), (xb, yb) in pairs:
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_training_on_a_streamed_folder(tmp_path):
    from autoside.recipe import Recipe
    from autoside.sidenets import create_sidenet
    from autoside.testing import tiny_backbone
    from autoside.train import train_model

    root = str(_folder(tmp_path, 32))
    cfg = DatasetConfig(name="imagefolder", root=root, train_size=8, val_size=2, workers=1, max_in_memory=1000)
    task = load_task(cfg, image_size=32)
    model = create_sidenet("linear", tiny_backbone("vit"), num_classes=2)
    result = train_model(model, task, Recipe(epochs=1, batch_size=4, warmup_epochs=0), device=torch.device("cpu"))
    assert result.peak_memory_bytes > 0 and len(result.history) == 1


def test_streamed_folder_with_a_broken_file_fails_before_training(tmp_path):
    root = _folder(tmp_path, size=32)
    (root / "b" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png: not a readable image"):
        load_task(DatasetConfig(name="imagefolder", root=str(root), train_size=8, val_size=2, max_in_memory=1000))


def test_augmentation_crops_and_flips_but_keeps_the_shape():
    torch.manual_seed(0)
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16)
    out = RandomResizedCropFlip()(x)
    assert out.shape == x.shape and not torch.equal(out, x)


def test_augmentation_is_off_by_default():
    from autoside.recipe import Recipe

    assert Recipe().augment is False


def test_a_file_that_fails_while_streaming_is_named_in_one_line(tmp_path):
    import io

    root = _folder(tmp_path, size=32)
    # A JPEG cut in half passes the up-front check (its header is whole) and fails only when a worker decodes it.
    data = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(data, "JPEG")
    (root / "b" / "cut.jpg").write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    cfg = DatasetConfig(name="imagefolder", root=str(root), train_size=10, val_size=2, workers=1, max_in_memory=1000)
    task = load_task(cfg, image_size=32)
    with pytest.raises(DataError) as info:
        for _ in task.train.batches(4):
            pass
    message = str(info.value)
    assert "cut.jpg: not a readable image" in message and "\n" not in message and "Traceback" not in message
