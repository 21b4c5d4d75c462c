"""evaluate_movie on a toy script with the shipped weights: ceiling, floor, in-between, n/a, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from mdream.errors import InputError
from mdream.eval.evaluate import evaluate_movie
from mdream.toyworld.commands import toy_script


def _movie(folder: Path, frames: list[np.ndarray], shots_json: Path) -> Path:
    (folder / "keyframes").mkdir(parents=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / "keyframes" / f"{i:04d}.png")
    shutil.copy2(shots_json, folder / "shots.json")
    return folder


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A 40-shot toy script (world 0) with ground truth, a shuffled and a noise movie, and their reports."""
    root = tmp_path_factory.mktemp("eval")
    script = toy_script(root / "script", seed=11, shots=40, size=64)
    gt = root / "script" / "groundtruth"
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((gt / "keyframes").glob("*.png"))]
    rng = np.random.default_rng(0)
    order = np.roll(np.arange(len(frames)), 7)  # every shot gets the frame of the shot 7 later
    shuffled = _movie(root / "shuffled", [frames[i] for i in order], gt / "shots.json")
    noise = _movie(root / "noise", [rng.integers(0, 256, frames[0].shape, dtype=np.uint8) for _ in frames],
                   gt / "shots.json")
    reports = {name: evaluate_movie(folder, script) for name, folder in
               (("gt", gt), ("shuffled", shuffled), ("noise", noise))}
    return {"root": root, "script": script, "gt": gt, "reports": reports}


def test_ground_truth_is_near_the_ceiling(toy):
    r = toy["reports"]["gt"]
    assert r.n_shots == 40 and r.n_faces > 30
    assert r.scene_accuracy >= 0.95
    assert r.cast_accuracy >= 0.85
    assert r.cast_set_accuracy >= 0.75
    assert r.identity_accuracy >= 0.85
    assert r.identity_margin >= 0.3
    assert r.identity_short_term >= 0.6
    assert r.n_long_term_pairs > 0 and r.identity_long_term >= 0.5
    assert r.copy_fraction <= 0.05
    assert r.toy_fid is not None and r.diversity is not None


def test_ground_truth_keeps_the_hidden_state(toy):
    """The ground truth's palette and trousers are constant per scene / character: continuity near 1, up to the
    shipped analyser's misreadings (an analyser without hidden-state heads says why it cannot measure it)."""
    from mdream.eval.evaluate import TOY_ANALYSER
    from mdream.eval.frame_analyser import FrameAnalyser

    r = toy["reports"]["gt"]
    if not FrameAnalyser.from_pretrained(TOY_ANALYSER).reads_hidden_state:
        assert "hidden-state heads" in r.continuity_unavailable and r.palette_continuity_short_term is None
        return
    assert r.continuity_unavailable is None
    assert r.n_palette_short_term_pairs > 20 and r.n_trousers_short_term_pairs > 20 and r.n_palette_long_term_pairs > 0
    assert r.palette_continuity_short_term >= 0.85 and r.palette_continuity_long_term >= 0.8
    assert r.trousers_continuity_short_term >= 0.8


def test_noise_is_near_the_floor(toy):
    gt, r = toy["reports"]["gt"], toy["reports"]["noise"]
    assert r.scene_accuracy <= 0.3
    assert r.cast_accuracy <= 0.2
    assert r.identity_accuracy <= 0.5
    assert r.identity_margin <= 0.1
    assert r.toy_fid > 5 * gt.toy_fid


def test_shuffled_frames_score_in_between(toy):
    """Right world, wrong shots: distribution metrics stay at ground truth, per-shot ones collapse."""
    gt, shuffled, noise = (toy["reports"][k] for k in ("gt", "shuffled", "noise"))
    for key in ("scene_accuracy", "cast_accuracy", "cast_set_accuracy", "identity_accuracy", "identity_margin"):
        assert getattr(shuffled, key) < 0.5 * getattr(gt, key), key
    # Shuffling keeps the frames' distribution: diversity as ground truth, toy-FID far from noise. Not at ground truth:
    # each reference takes the hidden palette and trousers read in its frame, which here shows another shot.
    assert shuffled.toy_fid < 0.5 * noise.toy_fid
    assert shuffled.diversity == pytest.approx(gt.diversity, rel=1e-6)
    assert shuffled.diversity > noise.diversity
    # Identity: shuffled faces are still faces, so consecutive appearances agree more than noise's
    # do on the margin (noise ~ 0), and less than ground truth.
    assert noise.identity_margin < shuffled.identity_margin + 0.1 and shuffled.identity_margin < gt.identity_margin


def test_report_to_dict_is_json(toy):
    data = json.loads(json.dumps(toy["reports"]["gt"].to_dict()))
    assert data["backend"] == "toy" and len(data["shots"]) == 40
    assert data["shots"][0]["predicted_scene"] is not None


def test_ids_outside_the_toy_world_are_not_applicable(toy, tmp_path):
    data = yaml.safe_load(toy["script"].read_text())
    shutil.copytree(toy["script"].parent / "faces", tmp_path / "faces")
    # A new scene the analyser never saw, and a character whose description is not the world's.
    data["scenes"].append({"id": "moon", "description": "the moon"})
    data["arcs"][0]["shots"][0]["scene"] = "moon"
    first_char = data["characters"][0]
    first_char["description"] = "someone else entirely"
    (tmp_path / "script.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    r = evaluate_movie(toy["gt"], tmp_path / "script.yaml")
    assert r.shots[0].predicted_scene is None
    assert any("moon" in note for note in r.notes)
    assert any(first_char["id"] in note for note in r.notes)
    assert r.scene_accuracy is not None  # the other shots are still scored


def test_script_outside_the_toy_world_gives_na_not_an_error(tmp_path):
    from conftest import small_script_dict, write_script

    # Its ids (ada, harbor, forest) exist in world 0 but its descriptions are not the world's.
    script = write_script(tmp_path / "movie", small_script_dict(4))
    (tmp_path / "movie" / "keyframes").mkdir()
    for i in range(4):
        Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(tmp_path / "movie" / "keyframes" / f"{i:04d}.png")
    r = evaluate_movie(tmp_path / "movie", script)
    assert r.scene_accuracy is None and r.cast_accuracy is None and r.toy_fid is None
    assert r.identity_short_term is None  # no toy layout, so no face crops
    assert r.copy_fraction is not None and len(r.notes) >= 2


def test_bad_inputs_raise_input_error(toy, tmp_path):
    script, gt = toy["script"], toy["gt"]
    with pytest.raises(InputError, match="not found"):
        evaluate_movie(tmp_path / "nope", script)
    with pytest.raises(InputError, match="keyframes"):
        (tmp_path / "empty").mkdir()
        evaluate_movie(tmp_path / "empty", script)
    partial = tmp_path / "partial"
    shutil.copytree(gt, partial)
    (partial / "keyframes" / "0005.png").unlink()
    with pytest.raises(InputError, match="0005.png"):
        evaluate_movie(partial, script)
    (partial / "keyframes" / "0005.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="Cannot read"):
        evaluate_movie(partial, script)
    wrong = tmp_path / "wrong"
    shutil.copytree(gt, wrong)
    (wrong / "shots.json").write_text(json.dumps({"shots": [{"index": 0, "id": "other"}]}))
    with pytest.raises(InputError, match="do not match"):
        evaluate_movie(wrong, script)
    with pytest.raises(InputError, match="backend"):
        evaluate_movie(gt, script, backend="magic")
    with pytest.raises(InputError, match="real backend needs"):
        evaluate_movie(gt, script, backend="real")
    with pytest.raises(InputError, match="not found"):
        evaluate_movie(gt, script, face_model=tmp_path / "missing.onnx")
    with pytest.raises(InputError):
        evaluate_movie(gt, tmp_path / "missing.yaml")
