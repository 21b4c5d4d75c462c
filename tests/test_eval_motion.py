"""The evaluator's motion reader, motion agreement, and `mdream eval --frames clips` (ground-truth clips vs the
animatic, through the project's own movie writer)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mdream.errors import CorruptArtifactError, InputError
from mdream.eval import metrics
from mdream.eval.evaluate import TOY_ANALYSER, TOY_MOTION_READER, ToyView, evaluate_movie, load_clips, shrink
from mdream.eval.motion_reader import NOBODY, STILL, MotionReader, MotionReaderConfig
from mdream.eval.toy_samples import toy_shot_clips, write_clips_movie
from mdream.toyworld.commands import toy_script


def tiny_reader() -> MotionReader:
    torch.manual_seed(0)
    return MotionReader(MotionReaderConfig(widths=(4, 8, 8), feature_dim=16)).eval()


# --- the reader ------------------------------------------------------------------------------------


def test_frame_indices_keep_first_and_last():
    assert MotionReader.frame_indices(16, 8).tolist() == [0, 2, 4, 6, 9, 11, 13, 15]
    assert MotionReader.frame_indices(8, 8).tolist() == list(range(8))
    assert MotionReader.frame_indices(3, 8).tolist() == [0, 0, 1, 1, 1, 1, 2, 2]
    with pytest.raises(ValueError):
        MotionReader.frame_indices(0, 8)


def test_reader_shapes_and_round_trip(tmp_path):
    reader = tiny_reader()
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 256, (12, 64, 64, 3), dtype=np.uint8), rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8),
             rng.integers(0, 256, (8, 48, 48, 3), dtype=np.uint8)]
    x = reader.preprocess(clips)
    assert x.shape == (3, 8, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    actions, camera, feats = reader(x)
    assert actions.shape == (3, 3, 6) and camera.shape == (3, 4) and feats.shape == (3, 16)
    read = reader.read(clips)
    assert read["actions"].shape == (3, 3) and read["camera"].shape == (3,)
    assert ((read["actions"] >= NOBODY) & (read["actions"] < 5)).all() and (read["camera"] < 4).all()
    assert reader.read([])["actions"].shape == (0, 3)

    reader.save_pretrained(tmp_path / "reader", steps=3)
    loaded = MotionReader.from_pretrained(tmp_path / "reader")
    assert loaded.config == reader.config and loaded.training_facts == {"steps": 3}
    with torch.no_grad():
        assert torch.allclose(loaded(x)[0], reader(x)[0]) and torch.allclose(loaded(x)[1], reader(x)[1])


def test_reader_load_errors(tmp_path):
    with pytest.raises(InputError, match="No motion reader"):
        MotionReader.from_pretrained(tmp_path)
    tiny_reader().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(CorruptArtifactError):
        MotionReader.from_pretrained(tmp_path)


def test_shrink_area_averages():
    frame = np.zeros((256, 256, 3), np.uint8)
    frame[:4, :4] = 255  # one 4x4 block -> one white pixel
    frame[4:6, 4:8] = 200  # half a block -> 100
    small = shrink(frame, 64)
    assert small.shape == (64, 64, 3) and small[0, 0, 0] == 255 and small[1, 1, 0] == 100 and small[2, 2, 0] == 0
    assert shrink(frame[:100, :100], 64).shape == (100, 100, 3)  # under twice the target: kept


def test_shipped_reader_reads_motion_not_poses():
    """Ground-truth clips read as their actions; their held versions (the keyframe repeated) as stand and a still
    camera. Facts of the shipped reader's own held-out measurement are in its config.json."""
    from mdream.toyworld import make_world
    from mdream.training.motion_reader import render_motion_samples

    reader = MotionReader.from_pretrained(TOY_MOTION_READER)
    facts = reader.training_facts
    assert facts["val_action_accuracy"] >= 0.85 and facts["held_read_as"]["stand"] >= 0.85
    clips, labels = render_motion_samples(make_world(0), 60, np.random.default_rng(5), lengths=(8, 16))
    read = reader.read(clips)
    occupied = labels["actions"] >= 0
    assert (read["actions"][occupied] == labels["actions"][occupied]).mean() >= 0.8
    assert (read["camera"] == labels["camera"]).mean() >= 0.8
    held = reader.read(clips[:, :1].repeat(8, axis=1))
    assert (held["actions"][occupied] == 0).mean() >= 0.85  # stand
    assert (held["camera"] == reader.config.cameras.index(STILL)).mean() >= 0.85


def test_training_samples_and_held_labels():
    from mdream.toyworld import make_world
    from mdream.training.motion_reader import held_labels, render_motion_samples

    clips, labels = render_motion_samples(make_world(0), 4, np.random.default_rng(1), lengths=(12,))
    assert clips.shape == (4, 8, 32, 32, 3) and clips.dtype == np.uint8
    assert labels["actions"].shape == (4, 3) and labels["camera"].shape == (4,)
    held = held_labels(labels, still=3)
    assert ((held["actions"] == 0) == (labels["actions"] >= 0)).all() and (held["camera"] == 3).all()


# --- the metric ------------------------------------------------------------------------------------


def test_motion_agreement_metric():
    R = metrics.MotionReading
    readings = [R(0, "walk", "walk"), R(0, "wave", "stand"), R(1, "walk", None), R(1, "reads a book", "stand"),
                R(2, "jump", "jump")]
    out = metrics.motion_agreement(readings, ("stand", "walk", "wave", "jump", "sit"))
    assert out["agreement"] == pytest.approx(2 / 4) and out["pairs"] == 4 and out["skipped"] == 1
    assert out["by_expected"] == {"jump": 1.0, "walk": 0.5, "wave": 0.0}
    empty = metrics.motion_agreement([R(0, "dance", "stand")], ("stand",))
    assert empty["agreement"] is None and empty["pairs"] == 0 and empty["skipped"] == 1


# --- evaluate_movie with clips ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def movies(tmp_path_factory):
    from mdream.eval.frame_analyser import FrameAnalyser
    from mdream.script import load_script, plan_script

    root = tmp_path_factory.mktemp("motion")
    script = toy_script(root / "script", seed=11, shots=12, size=32, clips=True)
    plan = plan_script(load_script(script))
    view = ToyView(plan, FrameAnalyser.from_pretrained(TOY_ANALYSER))
    out = {"root": root, "script": script, "plan": plan}
    for name, held in (("gt", False), ("held", True)):
        (root / name).mkdir()
        write_clips_movie(plan, toy_shot_clips(plan, view, 32, seed=3, held=held), root / f"{name}.mp4")
        out[name] = evaluate_movie(root / name, script, frames="clips")
    return out


def test_ground_truth_clips_move_the_animatic_does_not(movies):
    gt, held = movies["gt"], movies["held"]
    assert gt.frames == held.frames == "clips" and gt.clips_source.endswith("gt.mp4")
    assert gt.n_motion_pairs == held.n_motion_pairs > 5 and gt.n_camera_pairs == 12
    assert gt.motion_agreement >= 0.75 and gt.camera_agreement >= 0.75
    assert gt.motion_agreement >= held.motion_agreement + 0.3
    assert held.camera_agreement <= 0.2
    moving = [a for a in gt.motion_agreement_by_action if a != "stand"]
    assert moving and all(held.motion_agreement_by_action[a] <= 0.25 for a in moving)
    # the frame metrics still work on sampled clip frames
    assert gt.scene_accuracy >= 0.9 and gt.cast_accuracy >= 0.8 and gt.n_faces > 0
    assert any(s.predicted_camera is not None and s.predicted_actions for s in gt.shots)


def test_per_shot_clips_folder(movies):
    """A ground-truth folder's clips/NNNN.mp4 (8 frames each, whatever the shot's duration) are read per shot."""
    gt_folder = movies["script"].parent / "groundtruth"
    report = evaluate_movie(gt_folder, movies["script"], frames="clips")
    assert report.clips_source == str(gt_folder / "clips")
    assert report.motion_agreement >= 0.75 and report.n_motion_pairs == movies["gt"].n_motion_pairs


def test_animatic_of_a_movie_folder_is_the_floor(movies):
    """The animatic `generate` writes into the movie folder (viewing size, keyframes held) scored with --movie: no
    moving action and no camera read, like the held-keyframe movie."""
    from mdream.stages.preview import shot_frame_counts, viewing_size, write_animatic

    plan, gt_folder = movies["plan"], movies["script"].parent / "groundtruth"
    counts = shot_frame_counts([s.duration for s in plan.shots], plan.output.fps)
    keyframes = [np.asarray(Image.open(gt_folder / "keyframes" / f"{i:04d}.png").convert("RGB")) for i in range(len(counts))]
    animatic = write_animatic(zip(keyframes, counts, strict=True), movies["root"] / "animatic.mp4", fps=plan.output.fps,
                              size=viewing_size(plan.output.width, plan.output.height))
    report = evaluate_movie(gt_folder, movies["script"], frames="clips", movie=animatic.path)
    assert report.clips_source == str(animatic.path)
    assert report.camera_agreement <= 0.2
    assert report.motion_agreement <= movies["held"].motion_agreement + 0.1
    assert report.scene_accuracy >= 0.9


def test_clip_errors(movies, tmp_path):
    script, plan = movies["script"], movies["plan"]
    (tmp_path / "bare").mkdir()
    with pytest.raises(InputError, match="No clips to score") as info:
        evaluate_movie(tmp_path / "bare", script, frames="clips")
    assert "--frames keyframes" in info.value.hint
    with pytest.raises(InputError, match="frame source"):
        evaluate_movie(tmp_path / "bare", script, frames="video")
    with pytest.raises(InputError, match="--frames clips"):
        evaluate_movie(tmp_path / "bare", script, movie=movies["root"] / "gt.mp4")
    with pytest.raises(InputError, match="not found"):
        evaluate_movie(tmp_path / "bare", script, frames="clips", movie=tmp_path / "none.mp4")
    short = plan.shots[:-1]  # a movie one shot short cannot be split by the plan
    write_clips_movie(SimpleNamespace(output=plan.output, shots=short),
                   [np.zeros((4, 32, 32, 3), np.uint8)] * len(short), tmp_path / "short.mp4")
    with pytest.raises(InputError, match="frames; the script plans"):
        load_clips(tmp_path / "bare", plan, tmp_path / "short.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(InputError, match="cannot be read as a video"):
        load_clips(tmp_path / "bare", plan, tmp_path / "bad.mp4")


def test_cli_frames_clips(movies):
    from mdream.cli.main import app

    root, script = movies["root"], str(movies["script"])
    result = CliRunner().invoke(app, ["eval", str(root / "gt"), "--script", script, "--frames", "clips", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["frames"] == "clips" and data["motion_agreement"] >= 0.75 and data["n_motion_pairs"] > 5
    assert {"camera_agreement", "n_camera_pairs", "motion_agreement_by_action", "clips_source"} <= set(data)
    result = CliRunner().invoke(app, ["eval", str(root / "gt"), "--script", script, "--frames", "clips"])
    assert result.exit_code == 0 and "motion agreement" in result.stdout
    result = CliRunner().invoke(app, ["eval", str(root), "--script", script, "--frames", "clips"])
    assert result.exit_code == 2 and "Traceback" not in result.output and "No clips to score" in result.output


def test_the_packaged_recipe_is_how_the_shipped_reader_was_trained():
    from mdream.training.config import load_recipe
    from mdream.training.motion_reader import MotionReaderTrainingConfig

    _, values = load_recipe(MotionReaderTrainingConfig, "motion-reader-toy", "motion-reader")
    reader = MotionReader.from_pretrained(TOY_MOTION_READER)
    assert values["steps"] == reader.training_facts["steps"]
    assert values["num_frames"] == reader.config.num_frames and values["frame_size"] == reader.config.frame_size


def test_a_generated_animatic_is_named_in_the_notes(movies, tmp_path):
    """`mdream generate` without a video model publishes the animatic as the movie; its run report says so."""
    import shutil

    folder = tmp_path / "movie"
    folder.mkdir()
    shutil.copy2(movies["root"] / "held.mp4", tmp_path / "movie.mp4")
    (tmp_path / "movie.report.json").write_text(json.dumps({"movie_kind": "animatic"}))
    report = evaluate_movie(folder, movies["script"], frames="clips")
    assert any("is the animatic" in note for note in report.notes)
    assert report.motion_agreement == movies["held"].motion_agreement
