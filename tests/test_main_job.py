"""The main job as a user runs it: `mdream generate examples/scripts/short.yaml -o movie.mp4` with the shipped toy
bundle predicts every keyframe from the script, renders them, writes the storyboard and the animatic, and the movie:
with the bundle's video model, every shot's clip (frames that move, running time x fps); without one, the animatic."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from mdream.cli.main import app
from mdream.eval.evaluate import evaluate_movie
from mdream.models.bundle import ModelBundle
from mdream.script import load_script, plan_script
from mdream.stages.preview import read_video_info, shot_frame_counts, viewing_size

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "scripts"


def decoded_frames(movie: Path) -> list[np.ndarray]:
    """Every frame of an mp4, float32 [H, W, 3]."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(movie))
    width, height = next(reader)["size"]
    try:
        return [np.frombuffer(f, np.uint8).reshape(height, width, 3).astype(np.float32) for f in reader]
    finally:
        reader.close()


def toy_bundle_has_video() -> bool:
    video = ModelBundle.find("toy").components.get("video")
    return video is not None and video.present


def test_generate_makes_a_movie_from_the_short_example(tmp_path):
    with_video = toy_bundle_has_video()
    work = tmp_path / "examples"
    shutil.copytree(EXAMPLES, work, ignore=shutil.ignore_patterns(".mdream", "*.movie"))
    script = work / "short.yaml"
    assert all(shot.keyframe is None for arc in load_script(script).arcs for shot in arc.shots)  # all predicted
    movie = tmp_path / "out" / "short.mp4"
    result = CliRunner().invoke(app, ["generate", str(script), "-o", str(movie), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["movie_kind"] == ("video" if with_video else "animatic") and Path(report["output"]) == movie
    stages = {r["stage"]: r for r in report["stages"]}
    assert len(stages["keyframes"]["produced"]) == len(stages["encode"]["produced"]) == 10
    assert len(stages["video"]["produced"]) == 10 if with_video else "video" not in stages

    plan = plan_script(load_script(script))
    out, shots = plan.output, plan.shots
    info = read_video_info(movie)
    per_shot = [round(s.duration * out.fps) for s in shots]
    assert info.frames == round(plan.total_duration * out.fps) and abs(info.frames - sum(per_shot)) <= len(shots)
    assert info.fps == out.fps
    folder = tmp_path / "out" / "short"
    animatic = read_video_info(folder / "animatic.mp4")  # written with or without a video model
    assert (animatic.width, animatic.height) == viewing_size(out.width, out.height) == (256, 256)
    assert animatic.frames == info.frames and animatic.fps == out.fps
    # the movie (of clips or held keyframes) is muxed at the viewing size, like the animatic
    assert (info.width, info.height) == (animatic.width, animatic.height)

    # each shot's frame count within one frame of duration x fps
    counts = shot_frame_counts([s.duration for s in shots], out.fps)
    assert all(abs(c - p) <= 1 for c, p in zip(counts, per_shot, strict=True))
    stills = [Image.open(folder / "keyframes" / f"{i:04d}.png").convert("RGB") for i in range(len(shots))]
    assert all(k.size == (out.width, out.height) for k in stills)
    frames = decoded_frames(movie)
    assert len(frames) == sum(counts)
    held = [np.asarray(k.resize((info.width, info.height), Image.Resampling.LANCZOS), np.float32) for k in stills]
    starts = np.cumsum([0, *counts[:-1]])
    if with_video:
        # the shot's clip moves (its frames are not all one picture) and shows its own shot: on average a clip is
        # nearer its own keyframe than the other shots' keyframes
        own, other = [], []
        for i, (start, count) in enumerate(zip(starts, counts, strict=True)):
            clip = np.stack(frames[start: start + count])
            assert np.abs(clip - clip[:1]).mean(axis=(1, 2, 3)).max() > 1, f"shot {shots[i].id}'s clip does not move"
            mean = clip.mean(0)
            distances = [np.abs(mean - k).mean() for k in held]
            own.append(distances[i])
            other.append(np.mean(distances[:i] + distances[i + 1:]))
        assert np.mean(own) < np.mean(other), (own, other)
    else:  # the animatic: every shot holds its own keyframe for its frames
        for i, (start, count) in enumerate(zip(starts, counts, strict=True)):
            for frame in frames[start: start + count]:
                assert np.abs(frame - held[i]).mean() < 6, f"frame {start} is not shot {shots[i].id}'s keyframe"

    # the storyboard: one tile per shot, six to a row, each the shot's keyframe at 192x192 (preview.py's layout:
    # 8 px padding, a 28 px title, 32 px of caption under each tile)
    columns, cell, pad, title_h, caption_h = 6, 192, 8, 28, 32
    rows = -(-len(shots) // columns)
    with Image.open(folder / "storyboard.png") as sheet:
        assert sheet.size == (pad + columns * (cell + pad), title_h + pad + rows * (cell + caption_h + pad))
        for i, still in enumerate(stills):
            x, y = pad + (i % columns) * (cell + pad), title_h + pad + (i // columns) * (cell + caption_h + pad)
            tile = np.asarray(sheet.convert("RGB").crop((x, y, x + cell, y + cell)))
            assert np.array_equal(tile, np.asarray(still.resize((cell, cell), Image.Resampling.LANCZOS))), i

    # the predicted keyframes show what the script says: far above the evaluator's noise floor (0.0-0.17)
    scores = evaluate_movie(folder, script)
    assert scores.scene_accuracy >= 0.8 and scores.cast_set_accuracy >= 0.6, scores.metric_values()

    # a rerun reuses everything, the movie file too
    mtime = movie.stat().st_mtime_ns
    again = json.loads(CliRunner().invoke(app, ["generate", str(script), "-o", str(movie), "--device", "cpu",
                                                "--json"]).output)
    assert all(not r["produced"] for r in again["stages"])
    assert {r["stage"]: len(r["reused"]) for r in again["stages"]} == {
        "encode": 10, "keyframes": 10, "render": 10, "export": 1, **({"video": 10, "mux": 1} if with_video else {})}
    assert movie.stat().st_mtime_ns == mtime or not with_video
