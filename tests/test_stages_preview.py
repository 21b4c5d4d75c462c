"""The previews: storyboard PNG and animatic mp4 (frame count = running time x fps)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mdream.stages.preview import (
    read_video_info,
    shot_frame_counts,
    viewing_size,
    write_animatic,
    write_storyboard,
)


def test_frame_counts_sum_to_running_time_and_stay_within_a_frame_per_shot():
    durations = [0.3, 1.7, 2.05, 0.5, 4.0, 1.33]
    for fps in (4, 8, 24, 25):
        counts = shot_frame_counts(durations, fps)
        assert sum(counts) == round(sum(durations) * fps)
        for duration, count in zip(durations, counts, strict=True):
            assert abs(count - duration * fps) <= 1.0


def test_a_shot_shorter_than_a_frame_still_gets_one():
    assert shot_frame_counts([0.01, 1.0], 8) == [1, 7]


def test_frame_counts_exact_total():
    assert shot_frame_counts([1.0, 1.0, 1.0], 8) == [8, 8, 8]
    assert sum(shot_frame_counts([0.4] * 10, 8)) == 32  # 4 s at 8 fps, though each shot is 3.2 frames


def test_viewing_size_is_even_and_large_enough():
    assert viewing_size(64, 64) == (256, 256)
    w, h = viewing_size(33, 17)
    assert w % 2 == 0 and h % 2 == 0 and min(w, h) >= 256


def _colours(n):
    rng = np.random.default_rng(0)
    return [np.full((32, 32, 3), rng.integers(0, 256, 3), np.uint8) for _ in range(n)]


def test_animatic_holds_each_keyframe_for_its_shot(tmp_path):
    frames = _colours(3)
    counts = shot_frame_counts([0.5, 1.0, 0.25], 8)  # 4, 8, 2
    out = tmp_path / "movie" / "animatic.mp4"
    info = write_animatic(((f, c) for f, c in zip(frames, counts, strict=True)), out, fps=8, size=(64, 64))
    assert info.frames == 14
    read = read_video_info(out)
    assert (read.frames, read.fps, read.width, read.height) == (14, 8.0, 64, 64)
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(out))
    next(reader)
    decoded = [np.frombuffer(b, np.uint8).reshape(64, 64, 3) for b in reader]
    # the middle frame of each shot shows that shot's colour (H.264 is lossy: a tolerance)
    starts = np.cumsum([0] + counts[:-1])
    for frame, start, count in zip(frames, starts, counts, strict=True):
        assert np.abs(decoded[start + count // 2].astype(int) - frame[0, 0]).mean() < 12
    assert [p.name for p in out.parent.iterdir()] == ["animatic.mp4"]


def test_animatic_rejects_odd_size_and_leaves_no_temp_file_on_error(tmp_path):
    with pytest.raises(ValueError):
        write_animatic([], tmp_path / "a.mp4", fps=8, size=(63, 64))

    def broken():
        yield _colours(1)[0], 2
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_animatic(broken(), tmp_path / "b.mp4", fps=8, size=(64, 64))
    assert list(tmp_path.iterdir()) == []


def test_storyboard_is_a_grid_of_captioned_keyframes(tmp_path):
    frames = _colours(7)
    captions = [(f"s{i}", f"shot number {i} \x1b[31m with a very long identifier that will not fit") for i in range(7)]
    path = write_storyboard(frames, captions, tmp_path / "storyboard.png", title="Test", columns=3, cell=64)
    with Image.open(path) as sheet:
        assert sheet.width == 8 + 3 * (64 + 8)
        pixels = np.asarray(sheet.convert("RGB"))
    # each keyframe's colour appears in its cell
    for i, frame in enumerate(frames):
        x, y = 8 + (i % 3) * 72 + 32, 28 + 8 + (i // 3) * (64 + 32 + 8) + 32
        assert np.abs(pixels[y, x].astype(int) - frame[0, 0]).max() <= 2
    with pytest.raises(ValueError):
        write_storyboard(frames, captions[:2], tmp_path / "x.png")
