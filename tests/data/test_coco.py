import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from autoside.data import DatasetConfig, load_task
from autoside.data.coco import letterbox
from autoside.errors import ConfigError, DataError
from autoside.testing import tiny_coco_annotations, write_tiny_coco

RED = (255, 0, 0)


def _load(root: Path, image_size: int = 20, **sizes):
    options = {"train_size": 1, "val_size": 1, **sizes}
    return load_task(DatasetConfig(name="coco", root=str(root), **options), image_size=image_size)


def _by_id(task):
    out = {}
    for split in (task.train, task.val, task.test):
        for k, image_id in enumerate(split.image_ids):
            out[image_id] = (split.images[k], split.boxes[k], split.labels[k])
    return out


@pytest.mark.parametrize("where", ["instances.json", "annotations/instances.json"])
def test_reads_boxes_labels_and_letterboxes(tmp_path, where):
    write_tiny_coco(tmp_path, where=where)
    before = sorted(tmp_path.rglob("*"))
    task = _load(tmp_path)
    assert sorted(tmp_path.rglob("*")) == before  # the loader writes nothing
    assert task.kind == "detection" and task.classes == ("cat", "dog")  # ids 3, 7 -> labels 0, 1
    assert (len(task.train), len(task.val), len(task.test)) == (1, 1, 1)
    images = _by_id(task)
    assert set(images) == {"1", "2", "3"}

    pixels, boxes, labels = images["1"]  # 40x20 -> 20x10 on the top of a 20x20 square
    assert pixels.shape == (3, 20, 20) and pixels.dtype == torch.uint8
    expected = torch.tensor([[2.0, 1.0, 7.0, 4.0], [10.0, 5.0, 19.75, 10.0]])  # 12 clipped to x1 = 40, y1 = 20
    assert torch.allclose(boxes, expected) and labels.tolist() == [1, 0]
    assert (pixels[:, 10:] == 0).all()  # letterbox padding below the image
    red = (pixels[0] > 200) & (pixels[2] < 60)
    ys, xs = torch.nonzero(red, as_tuple=True)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (2, 1, 7, 4)  # the pixels sit where the box says

    pixels, boxes, labels = images["2"]  # 20x40 -> 10x20 on the left of the square
    assert torch.allclose(boxes, torch.tensor([[0.0, 10.0, 10.0, 20.0]])) and labels.tolist() == [0]
    assert (pixels[:, :, 10:] == 0).all()

    pixels, boxes, labels = images["3"]  # only a crowd annotation: a negative for training
    assert boxes.shape == (0, 4) and labels.shape == (0,)


def test_crowd_regions_are_not_targets_but_reach_the_evaluation(tmp_path):
    write_tiny_coco(tmp_path)
    task = _load(tmp_path)
    everything = {}
    for split in (task.train, task.val, task.test):
        assert len(split.crowd_boxes) in (0, len(split))  # () when none of the split's images has a crowd region
        for k, image_id in enumerate(split.image_ids):
            everything[image_id] = split.eval_targets(torch.tensor([k]))[0]
            assert split.targets(torch.tensor([k]))[0].keys() == {"boxes", "labels"}
    crowd = everything["3"]  # 10x10 scaled by 2; category 7 (dog) is label 1
    assert crowd["boxes"].tolist() == [[0.0, 0.0, 20.0, 20.0]] and crowd["labels"].tolist() == [1]
    assert crowd["iscrowd"].tolist() == [1]
    assert everything["1"]["iscrowd"].tolist() == [0, 0]
    crowded = next(s for s in (task.train, task.val, task.test) if "3" in s.image_ids)
    assert torch.equal(crowded.subset(torch.tensor([0])).crowd_boxes[0], crowd["boxes"])


def test_splits_are_seeded_and_disjoint(tmp_path):
    write_tiny_coco(tmp_path)
    a, b = _load(tmp_path), _load(tmp_path)
    assert (a.train.image_ids, a.val.image_ids, a.test.image_ids) == (
        b.train.image_ids,
        b.val.image_ids,
        b.test.image_ids,
    )
    assert len({*a.train.image_ids, *a.val.image_ids, *a.test.image_ids}) == 3
    with pytest.raises(ConfigError, match="coco has only 3 examples"):
        _load(tmp_path, train_size=2, val_size=1)


def test_letterbox_maps_pixels_by_the_returned_factors():
    canvas, (sx, sy) = letterbox(Image.new("RGB", (30, 7), RED), 16)
    assert canvas.shape == (3, 16, 16) and (sx, sy) == (16 / 30, 4 / 7)
    assert (canvas[0, :4, :] == 255).all() and (canvas[:, 4:] == 0).all()


def _edit(change):
    def apply(root: Path) -> None:
        data = tiny_coco_annotations()
        change(data, root)
        (root / "instances.json").write_text(json.dumps(data))

    return apply


def _ann(index, **fields):
    return _edit(lambda d, _: d["annotations"][index].update(fields))


BAD = {
    "malformed JSON": (lambda r: (r / "instances.json").write_text('{"images": ['), r"malformed JSON at line 1"),
    "missing top key": (_edit(lambda d, _: d.pop("categories")), r"top level: missing key 'categories'"),
    "missing bbox": (_edit(lambda d, _: d["annotations"][0].pop("bbox")), r"annotation id 11: missing key 'bbox'"),
    "missing file_name": (_edit(lambda d, _: d["images"][1].pop("file_name")), r"image id 2: missing key 'file_name'"),
    "box outside": (_ann(0, bbox=[30, 2, 11, 6]), r"annotation id 11: bbox \[30, 2, 11, 6\] lies outside its 40x20"),
    "zero area": (_ann(2, bbox=[0, 20, 0, 20]), r"annotation id 13: zero or negative area bbox"),
    "negative area": (_ann(2, bbox=[5, 20, 4, -3]), r"annotation id 13: zero or negative area bbox"),
    "bad bbox": (_ann(2, bbox=[5, 20, 4]), r"annotation id 13: bbox must be four finite numbers"),
    "nan bbox": (_ann(2, bbox=[5, 20, float("nan"), 3]), r"annotation id 13: bbox must be four finite numbers"),
    "unknown category": (_ann(1, category_id=99), r"annotation id 12: unknown category_id 99 \(categories: 3, 7\)"),
    "unknown image": (_ann(1, image_id=42), r"annotation id 12: image_id 42 is not in images"),
    "duplicate image id": (_edit(lambda d, _: d["images"][2].update(id=1)), r"image id 1: duplicate image id"),
    "duplicate annotation id": (_ann(3, id=11), r"annotation id 11: duplicate annotation id"),
    "missing image": (
        _edit(lambda d, r: (r / "images" / "b.png").unlink()),
        r"image id 2 \(b.png\): image file .* not found",
    ),
    "unreadable image": (
        _edit(lambda d, r: (r / "images" / "c.png").write_bytes(b"not a png")),
        r"image id 3 \(c.png\): not a readable image",
    ),
    "size mismatch": (
        _edit(lambda d, _: d["images"][0].update(width=41)),
        r"image id 1 \(a.png\): file is 40x20 but the annotation says 41x20",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_annotations_name_the_file_and_the_entry(tmp_path, case):
    write_tiny_coco(tmp_path)
    spoil, message = BAD[case]
    spoil(tmp_path)
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "instances.json")) + ": " + message):
        _load(tmp_path)


def test_missing_root_and_annotation_file(tmp_path):
    with pytest.raises(ConfigError, match="dataset.root: the coco dataset needs root"):
        load_task(DatasetConfig(name="coco", train_size=1, val_size=1))
    with pytest.raises(DataError, match="has no instances.json or annotations/instances.json"):
        _load(tmp_path)


def test_images_that_do_not_fit_in_memory_are_refused_before_decoding(tmp_path):
    write_tiny_coco(tmp_path)
    cfg = DatasetConfig(name="coco", root=str(tmp_path), train_size=1, val_size=1, max_in_memory=1000)
    with pytest.raises(ConfigError, match="dataset.max_in_memory: the 3 images of the splits take 3600 bytes"):
        load_task(cfg, image_size=20)
