"""Video datasets: files decoded with PyAV (``av``) or folders of frames, sampled into ``T``-frame clips.

Clips are kept in memory as uint8 ``(N, T, C, S, S)`` tensors (``S`` = ``frame_size``, each frame resized at decode
time so a dataset costs ``N*T*3*S*S`` bytes, not the size of its videos); the backbone's input size is applied per
batch like for images. Which frames make a clip:

* ``frame_stride`` unset: TSN segment sampling (Wang et al., ECCV 2016): the video is cut into ``T`` equal segments
  and one frame is taken from each, at a seeded random offset for training and at the segment's centre for
  evaluation;
* ``frame_stride = k``: ``T`` frames ``k`` apart, starting at a seeded random frame for training and centred for
  evaluation.

Sources (``dataset.root``): ``videofolder``, one subfolder per class holding video files or frame folders; and
``videolist``, an annotation list (one ``path label`` per line, Something-Something / Kinetics style; paths relative
to the list, labels class names or indices, checked against a ``classes.txt`` beside the list when there is one).
A bad video (unreadable, shorter than the clip, a frame folder with a missing frame, a list line naming a missing
file or an unknown label) stops loading with a :class:`~autoside.errors.DataError` naming the file, or is skipped and
counted with ``skip_bad_videos``.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from autoside.data.sources import Images, register_dataset
from autoside.data.splits import Split, Task, vtab_split
from autoside.errors import ConfigError, DataError

log = logging.getLogger("autoside")
T = TypeVar("T")

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ogv")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class ClipSampling:
    """How clips are cut from a video: ``frames`` (T), ``frame_stride`` (None: TSN segments) and ``frame_size``."""

    frames: int = 8
    frame_stride: int | None = None
    frame_size: int = 64

    def span(self) -> int:
        """Frames a video needs to yield one clip."""
        return self.frames if self.frame_stride is None else (self.frames - 1) * self.frame_stride + 1

    def indices(self, length: int, *, train: bool, rng: np.random.Generator) -> np.ndarray:
        """Frame indices of one clip from a video of ``length`` frames (``length >= span()``)."""
        t = self.frames
        if self.frame_stride is None:
            seg = length / t
            starts = np.floor(np.arange(t) * seg).astype(int)
            if train:
                offsets = rng.integers(0, max(1, int(seg)), size=t)
            else:
                offsets = np.full(t, int(seg / 2))
            return np.minimum(starts + offsets, length - 1)
        room = length - self.span()
        start = int(rng.integers(0, room + 1)) if train else room // 2
        return start + np.arange(t) * self.frame_stride


def _resize_short_side(width: int, height: int, size: int) -> tuple[int, int]:
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def centre_square(frames: np.ndarray) -> np.ndarray:
    """The centred ``S x S`` square of ``(k, H, W, 3)`` frames whose short side is ``S``."""
    h, w = frames.shape[1:3]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return frames[:, top : top + s, left : left + s]


def count_frames(path: Path) -> int:
    """Frames in a video file (from its header when it has one, else by decoding it)."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return stream.frames or sum(1 for _ in container.decode(stream))
    except (av.error.FFmpegError, IndexError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable video ({type(exc).__name__}: {exc})") from None


def decode_video(path: Path, short_side: int, indices: np.ndarray | None = None) -> np.ndarray:
    """RGB frames ``(k, H, W, 3)`` with short side ``short_side`` (aspect kept): all, or those at ``indices``
    (in that order, repeats allowed)."""
    import av

    wanted = None if indices is None else set(int(i) for i in indices)
    decoded: dict[int, np.ndarray] = {}
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            for i, frame in enumerate(container.decode(stream)):
                if wanted is None or i in wanted:
                    w, h = _resize_short_side(frame.width, frame.height, short_side)
                    decoded[i] = frame.to_ndarray(format="rgb24", width=w, height=h)
                if wanted is not None and len(decoded) == len(wanted):
                    break
    except (av.error.FFmpegError, IndexError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable video ({type(exc).__name__}: {exc})") from None
    order = sorted(decoded) if indices is None else [int(i) for i in indices]
    missing = [i for i in order if i not in decoded]
    if missing or not order:
        raise DataError(f"{path}: ends before frame {missing[0] if missing else 0} (decoded {len(decoded)} frames)")
    return np.stack([decoded[i] for i in order])


def frame_files(folder: Path) -> list[Path]:
    """The frames of a frame folder in order; numbered names must run without a gap."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS)
    if not files:
        raise DataError(f"{folder}: frame folder has no images ({', '.join(FRAME_EXTENSIONS)})")
    numbers = [re.findall(r"\d+", p.stem) for p in files]
    if all(numbers):
        values = sorted(int(n[-1]) for n in numbers)
        expected = range(values[0], values[0] + len(values))
        gap = next((e for e, v in zip(expected, values) if e != v), None)
        if gap is not None:
            raise DataError(f"{folder}: frame {gap} is missing (frames run {values[0]}..{values[-1]})")
        files = sorted(files, key=lambda p: int(re.findall(r"\d+", p.stem)[-1]))
    return files


def read_frame_folder(files: list[Path], short_side: int, indices: np.ndarray) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    frames = []
    for i in indices:
        try:
            with Image.open(files[int(i)]) as img:
                img = img.convert("RGB")
                img = img.resize(_resize_short_side(img.width, img.height, short_side), Image.BILINEAR)
                frames.append(np.asarray(img))
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{files[int(i)]}: not a readable frame ({exc})") from None
    return np.stack(frames)


def clip_length(path: Path, sampling: ClipSampling) -> int:
    """Frames of a video file or frame folder, checked to be enough for one clip."""
    length = len(frame_files(path)) if path.is_dir() else count_frames(path)
    if length < sampling.span():
        raise DataError(
            f"{path}: has {length} frames, a clip of {sampling.frames} frames"
            f"{'' if sampling.frame_stride is None else f' {sampling.frame_stride} apart'} needs {sampling.span()}"
        )
    return length


def read_clip(path: Path, sampling: ClipSampling, *, train: bool, rng: np.random.Generator) -> np.ndarray:
    """One clip ``(T, 3, S, S)`` uint8 from a video file or frame folder."""
    indices = sampling.indices(clip_length(path, sampling), train=train, rng=rng)
    if path.is_dir():
        frames = read_frame_folder(frame_files(path), sampling.frame_size, indices)
    else:
        frames = decode_video(path, sampling.frame_size, indices)
    return np.ascontiguousarray(centre_square(frames).transpose(0, 3, 1, 2))


def read_clips(paths: list[str | Path], sampling: ClipSampling) -> torch.Tensor:
    """Video files or frame folders as one uint8 batch of centred clips ``(N, T, 3, S, S)`` (what ``predict`` reads)."""
    clips = []
    for path in map(Path, paths):
        if not path.exists():
            raise DataError(f"{path}: video file not found")
        clips.append(read_clip(path, sampling, train=False, rng=np.random.default_rng(0)))
    return torch.from_numpy(np.stack(clips))


@dataclass(frozen=True)
class VideoEntry:
    """One labelled video (file or frame folder); ``problem`` is set when the listing already found it bad."""

    path: Path
    label: int
    problem: str | None = None


def list_class_folders(root: Path) -> tuple[list[VideoEntry], tuple[str, ...]]:
    """``root/<class>/<video file or frame folder>``."""
    if not root.is_dir():
        raise DataError(f"dataset.root: {root} is not a folder")
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if len(classes) < 2:
        raise DataError(f"dataset.root: {root} needs at least two class subfolders, found {len(classes)}")
    entries = [
        VideoEntry(item, label)
        for label, name in enumerate(classes)
        for item in sorted((root / name).iterdir())
        if item.is_dir() or item.suffix.lower() in VIDEO_EXTENSIONS
    ]
    return entries, classes


def read_annotation_list(path: Path) -> tuple[list[VideoEntry], tuple[str, ...]]:
    """``path label`` lines; labels are class names or indices (checked against ``classes.txt`` if present)."""
    if not path.is_file():
        raise DataError(f"dataset.root: annotation list {path} not found")
    known_file = path.parent / "classes.txt"
    known = tuple(n.strip() for n in known_file.read_text().splitlines() if n.strip()) if known_file.is_file() else None
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise DataError(f"{path}:{number}: expected 'path label', got {line.strip()!r}")
        rows.append((number, path.parent / parts[0].strip(), parts[1]))
    if not rows:
        raise DataError(f"{path}: annotation list has no entries")
    numeric = all(label.isdigit() for _, _, label in rows)
    if known is not None:
        classes = known
    elif numeric:
        classes = tuple(str(i) for i in range(max(int(label) for _, _, label in rows) + 1))
    else:
        classes = tuple(sorted({label for _, _, label in rows}))
    entries = []
    for number, video, label in rows:
        if label in classes:
            index = classes.index(label)
        else:
            index = int(label) if label.isdigit() and int(label) < len(classes) else -1
        problem = None
        if index < 0:
            problem = f"{path}:{number}: unknown label {label!r} (classes: {', '.join(classes[:10])}...)"
        elif not video.exists():
            problem = f"{path}:{number}: {video} not found"
        entries.append(VideoEntry(video, max(index, 0), problem))
    return entries, classes


class BadVideos:
    """Raise a video's DataError, or with ``skip`` count it and go on (``read`` then returns None)."""

    def __init__(self, skip: bool) -> None:
        self.skip, self.found = skip, []

    def read(self, fn: Callable[[], T]) -> T | None:
        try:
            return fn()
        except DataError as exc:
            if not self.skip:
                raise DataError(f"{exc} (pass --skip-bad-videos to skip such files)") from None
            self.found.append(str(exc))
            return None


def _probe(entry: VideoEntry, sampling: ClipSampling) -> int:
    if entry.problem:
        raise DataError(entry.problem)
    return clip_length(entry.path, sampling)


def load_video_task(
    entries: list[VideoEntry],
    classes: tuple[str, ...],
    *,
    name: str,
    sampling: ClipSampling,
    train_size: int,
    val_size: int,
    test_size: int | None,
    seed: int,
    skip_bad: bool,
) -> Task:
    """Check every video (before any training starts), split the good ones like the image datasets (seeded, VTAB-1k
    sizes), then decode each split: training clips with seeded jitter, validation and test clips centred."""
    bad = BadVideos(skip_bad)
    good = [e for e in entries if bad.read(functools.partial(_probe, e, sampling)) is not None]
    index = Images(torch.arange(len(good)), torch.tensor([e.label for e in good], dtype=torch.long), classes)
    cut = vtab_split(index, name=name, train_size=train_size, val_size=val_size, test_size=test_size, seed=seed)
    splits = {}
    for which, part in (("train", cut.train), ("val", cut.val), ("test", cut.test)):
        clips, labels = [], []
        for k in part.images.tolist():
            rng = np.random.default_rng([seed, k])
            clip = bad.read(functools.partial(read_clip, good[k].path, sampling, train=which == "train", rng=rng))
            if clip is not None:
                clips.append(clip)
                labels.append(good[k].label)
        if not clips:
            raise DataError(f"dataset {name}: no readable videos left in the {which} split")
        splits[which] = Split(torch.from_numpy(np.stack(clips)), torch.tensor(labels, dtype=torch.long))
    if bad.found:
        log.warning("dataset %s: skipped %d bad videos (first: %s)", name, len(bad.found), bad.found[0])
    return Task(name=name, classes=classes, train=splits["train"], val=splits["val"], test=splits["test"])


Lister = Callable[[Path], tuple[list[VideoEntry], tuple[str, ...]]]


def _user_dataset(lister: Lister, what: str) -> Callable[..., Task]:
    def load(root: str | None = None, **options) -> Task:
        if root is None:
            raise ConfigError(f"dataset.root: the {options['name']} dataset needs root: PATH ({what})")
        entries, classes = lister(Path(root))
        if not entries:
            raise DataError(f"dataset.root: no videos under {root}")
        return load_video_task(entries, classes, **options)

    return load


register_dataset(
    "videofolder",
    "video folder: ROOT/<class>/<video file or frame folder>, T frames per clip (PyAV)",
    needs_root=True,
    video=True,
)(_user_dataset(list_class_folders, "one subfolder per class"))
register_dataset(
    "videolist",
    "annotation list: ROOT is a text file of 'path label' lines (Something-Something / Kinetics style)",
    needs_root=True,
    video=True,
)(_user_dataset(read_annotation_list, "a text file of 'path label' lines"))
