"""The main job as a user runs it: `mdream generate examples/scripts/short.yaml -o movie.mp4` with the shipped toy
bundle predicts every keyframe from the script, renders them, and writes the storyboard and the animatic movie."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from mdream.cli.main import app
from mdream.eval.evaluate import evaluate_movie
from mdream.script import load_script, plan_script
from mdream.stages.preview import read_video_info

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "scripts"


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
    info = read_video_info(movie)
    assert info.frames == round(plan.total_duration * plan.output.fps) and info.fps == plan.output.fps
    assert min(info.width, info.height) >= 256 and info.width % 2 == 0
    with Image.open(tmp_path / "out" / "short" / "storyboard.png") as sheet:
        assert sheet.width >= 6 * 192

    # the predicted keyframes show what the script says: far above the evaluator's noise floor (0.0-0.17)
    scores = evaluate_movie(tmp_path / "out" / "short", script)
    assert scores.scene_accuracy >= 0.8 and scores.cast_set_accuracy >= 0.6, scores.metric_values()

    # a rerun reuses everything
    again = json.loads(CliRunner().invoke(app, ["generate", str(script), "-o", str(movie), "--device", "cpu",
                                                "--json"]).output)
    assert all(not r["produced"] for r in again["stages"])
