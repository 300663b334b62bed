"""COCO-format detection datasets: ``ROOT/images/`` with ``ROOT/instances.json`` (or
``ROOT/annotations/instances.json``, where COCO's own downloads put it).

What the loader decides, and why:

* **Classes**: the categories sorted by id become labels ``0..K-1`` and their names the class names, so sparse COCO
  ids (1..90 with gaps) never leave empty classes in the detector's head.
* **Letterbox, not stretch**: each image is scaled by one factor so that its longer side is ``image_size`` and pasted
  at the top-left corner of a black ``image_size`` square. An object keeps its aspect ratio whatever the photo's shape
  (a stretched portrait and a stretched landscape would show the same object squashed two ways, and the detector's
  anchor aspect ratios would stop meaning what they say); anchoring at the top-left makes the box transform a pure
  scale, ``x' = x * sx``, ``y' = y * sy``, which predictions invert by dividing (see :func:`letterbox`).
* **Crowd annotations** (``iscrowd: 1``, one box around a group of objects) are checked like any other, then kept
  apart from the targets (``DetectionSplit.crowd_boxes``), the COCO way: a detector never trains on them (a crowd box
  is not one object to localise), and the mAP ignores detections that land on them
  (:meth:`~autoside.data.detection.DetectionSplit.eval_targets`). An image whose only annotations are crowds is a
  negative for training, like any image without boxes.
* **Boxes** must lie inside their image up to half a pixel (COCO boxes are often rounded to .5); those within that
  tolerance are clipped to the image. Zero- or negative-area boxes and unknown category ids are errors, never skipped.

Every problem is one :class:`~autoside.errors.DataError` naming the annotation file and the annotation id (or image
id and file name). The JSON is checked in full and every listed image's header read before any pixel is decoded; only
the images the seeded splits pick are then decoded. The loader writes nothing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autoside.data.detection import DetectionSplit, DetectionTask
from autoside.data.sources import Images, register_dataset
from autoside.data.splits import vtab_split
from autoside.errors import ConfigError, DataError

ANNOTATION_FILES = ("instances.json", "annotations/instances.json")
BOX_TOLERANCE = 0.5  # pixels a box may stick out of its image (rounding in the annotation tool)
DEFAULT_DETECTION_SIZE = 224


@dataclass(frozen=True)
class CocoImage:
    """One listed image, its boxes and crowd regions in the original pixels, labels already contiguous."""

    id: str
    path: Path
    width: int
    height: int
    boxes: tuple[tuple[float, float, float, float], ...]
    labels: tuple[int, ...]
    crowd_boxes: tuple[tuple[float, float, float, float], ...] = ()
    crowd_labels: tuple[int, ...] = ()


def find_annotations(root: Path) -> Path:
    for name in ANNOTATION_FILES:
        if (root / name).is_file():
            return root / name
    raise DataError(f"dataset.root: {root} has no {' or '.join(ANNOTATION_FILES)}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno} ({exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with images, annotations and categories")
    return data


class _Checker:
    """Field access that fails with the file and the entry (``annotation id 7``) in the message."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, problem: str) -> DataError:
        return DataError(f"{self.path}: {where}: {problem}")

    def list(self, data: dict, key: str) -> list:
        value = data.get(key)
        if not isinstance(value, list):
            raise self.fail("top level", f"missing key {key!r} (a list)")
        return value

    def field(self, entry: Any, key: str, where: str, kinds: tuple[type, ...]) -> Any:
        if not isinstance(entry, dict) or key not in entry:
            raise self.fail(where, f"missing key {key!r}")
        value = entry[key]
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise self.fail(where, f"{key!r} must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
        return value

    def entry_id(self, entry: Any, kind: str, index: int) -> int | str:
        return self.field(entry, "id", f"{kind}[{index}]", (int, str))


def parse_coco(root: Path) -> tuple[tuple[str, ...], list[CocoImage]]:
    """Check the annotation file in full and return the class names and every listed image with its boxes."""
    path = find_annotations(root)
    check = _Checker(path)
    data = _read_json(path)
    categories, images, annotations = (check.list(data, key) for key in ("categories", "images", "annotations"))

    names: dict[int | str, str] = {}
    for i, cat in enumerate(categories):
        cid = check.entry_id(cat, "categories", i)
        if cid in names:
            raise check.fail(f"category id {cid}", "duplicate category id")
        names[cid] = check.field(cat, "name", f"category id {cid}", (str,))
    if not names:
        raise check.fail("categories", "no categories")
    order = sorted(names, key=lambda c: (isinstance(c, str), c))
    label_of = {cid: k for k, cid in enumerate(order)}

    listed: dict[int | str, dict[str, Any]] = {}
    for i, img in enumerate(images):
        iid = check.entry_id(img, "images", i)
        if iid in listed:
            raise check.fail(f"image id {iid}", "duplicate image id")
        where = f"image id {iid}"
        entry = {key: check.field(img, key, where, (int,)) for key in ("width", "height")}
        entry["file_name"] = check.field(img, "file_name", where, (str,))
        if entry["width"] < 1 or entry["height"] < 1:
            raise check.fail(where, f"width and height must be positive, got {entry['width']}x{entry['height']}")
        entry.update(boxes=[], labels=[], crowd_boxes=[], crowd_labels=[])
        listed[iid] = entry

    seen: set[int | str] = set()
    for i, ann in enumerate(annotations):
        aid = check.entry_id(ann, "annotations", i)
        where = f"annotation id {aid}"
        if aid in seen:
            raise check.fail(where, "duplicate annotation id")
        seen.add(aid)
        iid = check.field(ann, "image_id", where, (int, str))
        if iid not in listed:
            raise check.fail(where, f"image_id {iid!r} is not in images")
        cid = check.field(ann, "category_id", where, (int, str))
        if cid not in label_of:
            raise check.fail(where, f"unknown category_id {cid!r} (categories: {', '.join(map(str, order))})")
        image = listed[iid]
        box = _check_box(check, ann, where, image["width"], image["height"])
        crowd = "crowd_" if ann.get("iscrowd", 0) else ""
        image[crowd + "boxes"].append(box)
        image[crowd + "labels"].append(label_of[cid])

    folder = root / "images"
    out = []
    for iid, entry in listed.items():
        lists = {key: tuple(entry[key]) for key in ("boxes", "labels", "crowd_boxes", "crowd_labels")}
        image = CocoImage(str(iid), folder / entry["file_name"], entry["width"], entry["height"], **lists)
        _check_header(check, image)
        out.append(image)
    if not out:
        raise check.fail("images", "no images listed")
    return tuple(names[c] for c in order), out


def _check_box(check: _Checker, ann: dict, where: str, width: int, height: int) -> tuple[float, float, float, float]:
    """COCO ``[x, y, w, h]`` -> clipped ``(x0, y0, x1, y1)``; outside (beyond the tolerance) or empty is an error."""
    bbox = check.field(ann, "bbox", where, (list,))
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
    if len(bbox) != 4 or not numbers:
        raise check.fail(where, f"bbox must be four finite numbers [x, y, width, height], got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    if not (w > 0 and h > 0):
        raise check.fail(where, f"zero or negative area bbox {bbox!r} (width and height must be > 0)")
    tol = BOX_TOLERANCE
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        raise check.fail(where, f"bbox {bbox!r} lies outside its {width}x{height} image")
    return max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))


def _check_header(check: _Checker, image: CocoImage) -> None:
    """The file exists, its header reads, and its size is the one the boxes were drawn on."""
    from PIL import Image, UnidentifiedImageError

    where = f"image id {image.id} ({image.path.name})"
    if not image.path.is_file():
        raise check.fail(where, f"image file {image.path} not found")
    try:
        with Image.open(image.path) as img:
            size = img.size
    except (UnidentifiedImageError, OSError) as exc:
        raise check.fail(where, f"not a readable image ({exc})") from None
    if size != (image.width, image.height):
        raise check.fail(where, f"file is {size[0]}x{size[1]} but the annotation says {image.width}x{image.height}")


def letterbox(img: Any, size: int) -> tuple[torch.Tensor, tuple[float, float]]:
    """A PIL image scaled (longer side ``size``, aspect kept) onto the top-left of a black ``size`` square, as uint8
    ``(3, size, size)``, and the factors ``(sx, sy)`` that map its pixel coordinates onto the square's."""
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    width, height = img.size
    scale = size / max(width, height)
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    canvas = torch.zeros((3, size, size), dtype=torch.uint8)
    canvas[:, : new[1], : new[0]] = pil_to_tensor(img.convert("RGB").resize(new, Image.BICUBIC, reducing_gap=None))
    return canvas, (new[0] / width, new[1] / height)


def _decode(check: _Checker, images: list[CocoImage], size: int) -> DetectionSplit:
    from PIL import Image, UnidentifiedImageError

    pixels, boxes, labels, crowd_boxes, crowd_labels = [], [], [], [], []
    for image in images:
        try:
            with Image.open(image.path) as img:
                canvas, (sx, sy) = letterbox(img, size)
        except (UnidentifiedImageError, OSError) as exc:
            raise check.fail(f"image id {image.id} ({image.path.name})", f"not a readable image ({exc})") from None
        pixels.append(canvas)
        scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
        boxes.append(torch.tensor(image.boxes, dtype=torch.float32).reshape(-1, 4) * scale)
        labels.append(torch.tensor(image.labels, dtype=torch.int64))
        crowd_boxes.append(torch.tensor(image.crowd_boxes, dtype=torch.float32).reshape(-1, 4) * scale)
        crowd_labels.append(torch.tensor(image.crowd_labels, dtype=torch.int64))
    stacked = torch.stack(pixels) if pixels else torch.empty((0, 3, size, size), dtype=torch.uint8)
    crowded = any(len(c) for c in crowd_labels)
    return DetectionSplit(
        stacked,
        tuple(boxes),
        tuple(labels),
        tuple(i.id for i in images),
        tuple(crowd_boxes) if crowded else (),
        tuple(crowd_labels) if crowded else (),
    )


@register_dataset(
    "coco", "object detection, COCO format: ROOT/images/ + ROOT/instances.json (boxes)", needs_root=True, detection=True
)
def load_coco(
    root: str | None = None,
    *,
    name: str = "coco",
    image_size: int | None = None,
    train_size: int,
    val_size: int,
    test_size: int | None,
    seed: int,
    max_in_memory: int | None = None,
) -> DetectionTask:
    """Check the annotations, cut seeded VTAB-style splits of the images, and decode only the images they hold."""
    if root is None:
        raise ConfigError("dataset.root: the coco dataset needs root: PATH (with images/ and instances.json)")
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"dataset.root: {base} is not a folder")
    classes, images = parse_coco(base)
    n = len(images)
    index = Images(torch.arange(n), torch.zeros(n, dtype=torch.long), classes)
    cut = vtab_split(index, name=name, train_size=train_size, val_size=val_size, test_size=test_size, seed=seed)
    size = image_size or DEFAULT_DETECTION_SIZE
    chosen = len(cut.train) + len(cut.val) + len(cut.test)
    if max_in_memory is not None and chosen * 3 * size * size > max_in_memory:
        raise ConfigError(
            f"dataset.max_in_memory: the {chosen} images of the splits take {chosen * 3 * size * size} bytes at "
            f"{size} px, more than {max_in_memory}; lower dataset.test_size or image_size, or raise the limit"
        )
    check = _Checker(find_annotations(base))
    splits = {
        which: _decode(check, [images[k] for k in part.images.tolist()], size)
        for which, part in (("train", cut.train), ("val", cut.val), ("test", cut.test))
    }
    return DetectionTask(name=name, classes=classes, **splits)
