"""``pasted_objects``: a built-in object-detection task from real pixels, generated offline in about a second.

Backgrounds are seeded random square crops (35-100 % of the short side, mirrored half the time) of photographs that
ship inside scikit-image (colour ones, and grey ones repeated to three channels). Objects are real shapes autoside
already reads: Animal-MNIST silhouettes and scikit-learn's handwritten digits. Each is cut at its own outline (the
pixels at or above half intensity after a bilinear resize), filled with one seeded colour whose brightness is far
from the background under it, and pasted with that mask, so the photograph shows around the shape. A box is the
tight box of the pasted mask, ``(x0, y0, x1, y1)`` with ``x1``/``y1`` one past the last object pixel (the pixel-edge
convention of COCO and torchvision). Images hold 1-3 objects whose masks never touch and whose boxes overlap little
(IoU <= 0.25), so no object hides part of another and every box stays exact.

Five classes, few enough for a detector to learn on two CPU cores in minutes and unlike enough to be learnable from
a single-colour silhouette: three Animal-MNIST animals with distinct outlines (bird, elephant, giraffe; the package
names its classes by index only, these names are read off its images: indices 1, 5, 6) and two digits (0: a ring, 7:
an open stroke). A larger object set would spend the CPU budget on telling a horse from a cow.

Held out for testing: the test split is pasted onto photographs that training and validation never use, with shape
examples they never use (the last fifth of each class), so its score measures generalisation, not memory.
Every split draws from its own seeded stream: the same seed gives identical images, and changing one split's size
leaves the others as they were. Only ``train_size + val_size + test_size`` images are made (test: 200 when unset).
"""

from __future__ import annotations

import colorsys
import functools
from typing import Any

import numpy as np
import torch

from autoside.data.detection import DetectionSplit, DetectionTask
from autoside.data.sources import register_dataset
from autoside.errors import ConfigError

CLASSES = ("bird", "elephant", "giraffe", "digit_0", "digit_7")
_SOURCES = (("animal_mnist", 1), ("animal_mnist", 5), ("animal_mnist", 6), ("digits", 0), ("digits", 7))
TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "immunohistochemistry", "camera", "coins", "grass", "page", "brick")
TEST_PHOTOS = ("chelsea", "hubble_deep_field", "moon", "gravel", "text")
DEFAULT_SIZE = 128
DEFAULT_TEST_SIZE = 200
OBJECT_SCALE = (0.18, 0.42)  # the longer side of an object, as a fraction of the image side
CROP_SCALE = (0.35, 1.0)  # the side of a background crop, as a fraction of the photograph's short side
MAX_IOU = 0.25
TEST_FRACTION = 0.2


@functools.cache
def _photos(names: tuple[str, ...]) -> tuple[Any, ...]:
    """The named scikit-image photographs as RGB PIL images (read once per process)."""
    from PIL import Image
    from skimage import data as skdata

    out = []
    for name in names:
        photo = getattr(skdata, name)()
        photo = np.repeat(photo[..., None], 3, axis=2) if photo.ndim == 2 else photo[..., :3]
        out.append(Image.fromarray(np.ascontiguousarray(photo, dtype=np.uint8)))
    return tuple(out)


@functools.cache
def _shapes(test: bool) -> tuple[tuple[np.ndarray, ...], ...]:
    """Per class, its shape examples (uint8 grey, cropped to their ink): the last fifth for test, the rest else."""
    from autoside.data.sources import load_animal_mnist, load_digits_dataset

    sources = {"animal_mnist": load_animal_mnist(), "digits": load_digits_dataset()}
    pools = []
    for source, label in _SOURCES:
        data = sources[source]
        images = data.images[data.labels == label][:, 0].numpy()
        cut = round(len(images) * (1 - TEST_FRACTION))
        pools.append(tuple(_crop_to_ink(img) for img in (images[cut:] if test else images[:cut])))
    return tuple(pools)


def _crop_to_ink(img: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(img >= 128)
    return img[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _mask(shape: np.ndarray, longer: int) -> np.ndarray:
    """The shape resized (bilinear, aspect kept) so its longer side is ``longer``, as a mask cropped to its ink."""
    from PIL import Image

    h, w = shape.shape
    scale = longer / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resized = np.asarray(Image.fromarray(shape).resize(size, Image.BILINEAR)) >= 128
    ys, xs = np.nonzero(resized)
    return resized[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _background(photo: Any, size: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded square crop of ``photo``, resampled straight to ``size`` and mirrored half the time."""
    from PIL import Image

    w, h = photo.size
    side = max(8, round(rng.uniform(*CROP_SCALE) * min(h, w)))
    top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    crop = photo.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side), reducing_gap=None)
    return np.array(crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop)


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _colour(background_luma: float, rng: np.random.Generator) -> np.ndarray:
    """A seeded hue, bright on a dark background and dark on a bright one, so the shape is always visible."""
    value = rng.uniform(0.8, 1.0) if background_luma < 128 else rng.uniform(0.05, 0.3)
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.4, 1.0), value)
    return np.array([round(c * 255) for c in rgb], dtype=np.uint8)


def compose(
    photo: Any, shapes: tuple[tuple[np.ndarray, ...], ...], size: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[tuple[int, int, int, int]], list[int]]:
    """One image ``(size, size, 3)`` with 1-3 pasted objects, their exact boxes and labels."""
    image = _background(photo, size, rng)
    occupied = np.zeros((size, size), dtype=bool)
    boxes, labels = [], []
    for _ in range(int(rng.integers(1, 4))):
        label = int(rng.integers(len(shapes)))
        pool = shapes[label]
        mask = _mask(pool[int(rng.integers(len(pool)))], round(rng.uniform(*OBJECT_SCALE) * size))
        h, w = mask.shape
        for _attempt in range(20):
            y, x = int(rng.integers(size - h + 1)), int(rng.integers(size - w + 1))
            box = (x, y, x + w, y + h)
            near = occupied[max(0, y - 1) : y + h + 1, max(0, x - 1) : x + w + 1]  # masks may not even touch
            if all(_iou(box, b) <= MAX_IOU for b in boxes) and not (near & _pad(mask, near.shape, x, y)).any():
                break
        else:
            continue  # no free place for this one: the image keeps fewer objects
        region = image[y : y + h, x : x + w]
        luma = float((region @ np.array([0.299, 0.587, 0.114])).mean())
        region[mask] = _colour(luma, rng)
        occupied[y : y + h, x : x + w] |= mask
        boxes.append(box)
        labels.append(label)
    return image, boxes, labels


def _pad(mask: np.ndarray, shape: tuple[int, int], x: int, y: int) -> np.ndarray:
    """The mask grown by one pixel on every side, clipped like the ``near`` window (so they overlay exactly)."""
    grown = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), dtype=bool)
    for dy in range(3):
        for dx in range(3):
            grown[dy : dy + mask.shape[0], dx : dx + mask.shape[1]] |= mask
    top, left = (1 if y > 0 else 0), (1 if x > 0 else 0)
    return grown[1 - top : 1 - top + shape[0], 1 - left : 1 - left + shape[1]]


def make_split(count: int, *, test: bool, size: int, seed: int, stream: int, prefix: str) -> DetectionSplit:
    """``count`` images from their own seeded stream (training photos and shapes, or the held-out ones)."""
    rng = np.random.default_rng([seed, stream])
    photos, shapes = _photos(TEST_PHOTOS if test else TRAIN_PHOTOS), _shapes(test)
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    boxes, labels = [], []
    for k in range(count):
        images[k], b, lab = compose(photos[int(rng.integers(len(photos)))], shapes, size, rng)
        boxes.append(torch.tensor(b, dtype=torch.float32).reshape(-1, 4))
        labels.append(torch.tensor(lab, dtype=torch.int64))
    ids = tuple(f"{prefix}/{k:05d}" for k in range(count))
    return DetectionSplit(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), tuple(boxes), tuple(labels), ids)


@register_dataset(
    "pasted_objects",
    "object detection: Animal-MNIST animals and digits pasted on scikit-image photos, 5 classes, 128 px",
    detection=True,
)
def load_pasted_objects(
    root: str | None = None,
    *,
    name: str = "pasted_objects",
    image_size: int | None = None,
    train_size: int,
    val_size: int,
    test_size: int | None,
    seed: int,
    **_: object,
) -> DetectionTask:
    size = image_size or DEFAULT_SIZE
    if size < 32:
        raise ConfigError(f"image_size: pasted_objects needs at least 32 pixels, got {size}")
    return DetectionTask(
        name=name,
        classes=CLASSES,
        train=make_split(train_size, test=False, size=size, seed=seed, stream=0, prefix="train"),
        val=make_split(val_size, test=False, size=size, seed=seed, stream=1, prefix="val"),
        test=make_split(test_size or DEFAULT_TEST_SIZE, test=True, size=size, seed=seed, stream=2, prefix="test"),
    )
