"""The main job as a user runs it: `mdream generate examples/scripts/short.yaml -o movie.mp4` with the shipped toy
bundle predicts every keyframe from the script, renders them, and writes the storyboard and the animatic movie."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from mdream.cli.main import app
from mdream.eval.evaluate import evaluate_movie
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


def test_generate_makes_a_movie_from_the_short_example(tmp_path):
    work = tmp_path / "examples"
    shutil.copytree(EXAMPLES, work, ignore=shutil.ignore_patterns(".mdream", "*.movie"))
    script = work / "short.yaml"
    assert all(shot.keyframe is None for arc in load_script(script).arcs for shot in arc.shots)  # all predicted
    movie = tmp_path / "out" / "short.mp4"
    result = CliRunner().invoke(app, ["generate", str(script), "-o", str(movie), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["movie_kind"] == "animatic" and Path(report["output"]) == movie
    stages = {r["stage"]: r for r in report["stages"]}
    assert len(stages["keyframes"]["produced"]) == len(stages["encode"]["produced"]) == 10

    plan = plan_script(load_script(script))
    out, shots = plan.output, plan.shots
    info = read_video_info(movie)
    per_shot = [round(s.duration * out.fps) for s in shots]
    assert info.frames == round(plan.total_duration * out.fps) and abs(info.frames - sum(per_shot)) <= len(shots)
    assert info.fps == out.fps and (info.width, info.height) == viewing_size(out.width, out.height) == (256, 256)

    # every shot holds its own keyframe for its frames (each count within one frame of duration x fps)
    counts = shot_frame_counts([s.duration for s in shots], out.fps)
    assert all(abs(c - p) <= 1 for c, p in zip(counts, per_shot, strict=True))
    folder = tmp_path / "out" / "short"
    stills = [Image.open(folder / "keyframes" / f"{i:04d}.png").convert("RGB") for i in range(len(shots))]
    assert all(k.size == (out.width, out.height) for k in stills)
    frames = decoded_frames(movie)
    start = 0
    for i, count in enumerate(counts):
        held = np.asarray(stills[i].resize((info.width, info.height), Image.Resampling.LANCZOS), np.float32)
        for frame in frames[start: start + count]:
            assert np.abs(frame - held).mean() < 6, f"frame {start} is not shot {shots[i].id}'s keyframe"
        start += count
    assert start == len(frames)

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

    # a rerun reuses everything
    again = json.loads(CliRunner().invoke(app, ["generate", str(script), "-o", str(movie), "--device", "cpu",
                                                "--json"]).output)
    assert all(not r["produced"] for r in again["stages"])
    assert {r["stage"]: len(r["reused"]) for r in again["stages"]} == {"encode": 10, "keyframes": 10, "render": 10,
                                                                       "export": 1}
