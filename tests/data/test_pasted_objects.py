import numpy as np
import pytest
import torch
from PIL import Image

from autoside.data import DatasetConfig, load_task, pasted_objects
from autoside.errors import ConfigError


def _load(seed=0, image_size=None, **sizes):
    options = {"train_size": 24, "val_size": 8, "test_size": 8, **sizes}
    return load_task(DatasetConfig(name="pasted_objects", seed=seed, **options), image_size=image_size)


def test_a_seed_gives_identical_data_and_another_seed_other_data():
    a, b, c = _load(), _load(), _load(seed=1)
    assert a.kind == "detection" and a.classes == pasted_objects.CLASSES
    for part in ("train", "val", "test"):
        x, y = getattr(a, part), getattr(b, part)
        assert torch.equal(x.images, y.images) and x.image_ids == y.image_ids
        assert all(torch.equal(p, q) for p, q in zip(x.boxes + x.labels, y.boxes + y.labels, strict=True))
    assert not torch.equal(a.train.images, c.train.images)
    # Each split draws from its own stream: a bigger test split leaves training data as it was.
    assert torch.equal(_load(test_size=12).train.images, a.train.images)


def test_shapes_sizes_and_boxes_inside_the_image():
    task = _load(image_size=96)
    assert task.train.images.shape == (24, 3, 96, 96) and task.train.images.dtype == torch.uint8
    assert (len(task.train), len(task.val), len(task.test)) == (24, 8, 8)
    for split in (task.train, task.val, task.test):
        for boxes, labels in zip(split.boxes, split.labels, strict=True):
            assert boxes.dtype == torch.float32 and labels.dtype == torch.int64
            assert 1 <= len(boxes) <= 3 and len(boxes) == len(labels)
            assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 96).all()
            assert (boxes[:, 2:] > boxes[:, :2]).all()
            assert ((labels >= 0) & (labels < 5)).all()


def test_splits_are_disjoint_and_the_test_split_uses_held_out_photos():
    task = _load()
    ids = [i for s in (task.train, task.val, task.test) for i in s.image_ids]
    assert len(set(ids)) == len(ids)
    flat = torch.cat([task.train.images, task.val.images, task.test.images]).flatten(1)
    assert len(torch.unique(flat, dim=0)) == len(flat)
    assert not set(pasted_objects.TEST_PHOTOS) & set(pasted_objects.TRAIN_PHOTOS)


def test_boxes_are_tight_to_the_pasted_masks():
    """On a flat grey photograph every changed pixel is object: each box touches object pixels on all four sides,
    and no object pixel lies outside the boxes."""
    grey = Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8))
    shapes = pasted_objects._shapes(False)
    rng = np.random.default_rng(0)
    for _ in range(30):
        image, boxes, labels = pasted_objects.compose(grey, shapes, 128, rng)
        changed = (image != 128).any(axis=2)
        covered = np.zeros_like(changed)
        assert boxes and len(boxes) == len(labels)
        for x0, y0, x1, y1 in boxes:
            inside = changed[y0:y1, x0:x1]
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            covered[y0:y1, x0:x1] = True
        assert not (changed & ~covered).any()


def test_too_small_an_image_is_refused():
    with pytest.raises(ConfigError, match="image_size: pasted_objects needs at least 32"):
        _load(image_size=16)
