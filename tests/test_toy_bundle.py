"""``mdream train bundle``: every toy model trained in dependency order into one bundle, resumable.

The orchestration's rules (order, skipping, restarting what depends on a retrained step) are checked with fake
trainers (fast); ``--smoke`` runs the real trainers with tiny budgets, then loads the written bundle and makes a
movie with it (slow).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from conftest import small_script_dict, write_script
from safetensors import safe_open
from typer.testing import CliRunner

from mdream.training import toy_bundle
from mdream.training.toy_bundle import STEPS, train_toy_bundle

ORDER = ["clip", "face_embedder", "tokenizer", "tokenizer_hidden", "ar", "analyser", "motion_reader", "video"]


def test_steps_are_in_dependency_order():
    assert [s.name for s in STEPS] == ORDER
    seen: set[str] = set()
    for step in STEPS:
        assert set(step.needs) <= seen, f"{step.name} reads {step.needs} before they are trained"
        seen.add(step.name)


class FakeBundle(toy_bundle._Bundle):
    """Trainers that only write their staged output and record which resume setting they got."""

    calls: list[tuple[str, str]] = []

    def _fake(self, step):
        FakeBundle.calls.append((step.name, self.resume))
        path = self.path(step.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix:
            path.write_text("weights")
        else:
            path.mkdir(exist_ok=True)
        return {"upstream": "x"}, {"steps": 1}, None

    clip = face_embedder = tokenizer = tokenizer_hidden = ar = analyser = motion_reader = video = _fake


@pytest.fixture
def fake_steps(monkeypatch):
    FakeBundle.calls = []
    monkeypatch.setattr(toy_bundle, "_Bundle", FakeBundle)
    monkeypatch.setattr(toy_bundle, "registered_trainers", lambda: ["clip", "face-embedder", "tokenizer", "ar", "analyser",
                                                                         "motion-reader"])
    return FakeBundle.calls


def test_rerun_skips_finished_steps_and_restarts_what_a_retrained_step_feeds(tmp_path, fake_steps):
    first = train_toy_bundle(tmp_path / "out", None)
    assert [(s.name, s.status) for s in first.steps] == [(n, "trained") for n in ORDER[:-1]] + [
        ("video", "not available")]
    assert [name for name, _ in fake_steps] == ORDER[:-1]
    assert "does not exist yet" in first.steps[-1].note
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [s["name"] for s in manifest["steps"]] == ORDER
    assert manifest["steps"][2]["inputs"] == {"upstream": "x"} and manifest["steps"][2]["status"] == "done"

    fake_steps.clear()
    again = train_toy_bundle(tmp_path / "out", None)
    assert [s.status for s in again.steps[:-1]] == ["skipped"] * 7 and not fake_steps

    # a lost output of the from-scratch tokenizer: it is trained again (resuming its run), and its fine-tuning and
    # the AR model, which read it, start over; the CLIP, face embedder and evaluator models stay skipped
    (tmp_path / "out" / "bundle" / "models" / "toy-tokenizer-base").rmdir()
    third = train_toy_bundle(tmp_path / "out", None)
    assert fake_steps == [("tokenizer", "auto"), ("tokenizer_hidden", "never"), ("ar", "never")]
    assert [s.status for s in third.steps] == ["skipped", "skipped", "trained", "trained", "trained", "skipped",
                                               "skipped", "not available"]

    # a lost fine-tuned tokenizer: only the fine-tuning (resuming) and the AR model (over) are trained again
    fake_steps.clear()
    (tmp_path / "out" / "bundle" / "models" / "toy-tokenizer").rmdir()
    train_toy_bundle(tmp_path / "out", None)
    assert fake_steps == [("tokenizer_hidden", "auto"), ("ar", "never")]

    # a step recorded under another recipe than the plan's: trained again from the start, and what reads it
    manifest_path = tmp_path / "out" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    next(e for e in manifest["steps"] if e["name"] == "tokenizer_hidden")["recipe"] = "tokenizer-toy-older"
    manifest_path.write_text(json.dumps(manifest))
    fake_steps.clear()
    train_toy_bundle(tmp_path / "out", None)
    assert fake_steps == [("tokenizer_hidden", "never"), ("ar", "never")]
    fake_steps.clear()
    train_toy_bundle(tmp_path / "out", None)
    assert not fake_steps  # recorded with the current recipe now

    # an unfinished step whose checkpoints were begun under another recipe: started over, not resumed
    (tmp_path / "out" / "bundle" / "models" / "toy-ar").rmdir()
    plan = tmp_path / "out" / "ar" / toy_bundle.STEP_PLAN
    assert json.loads(plan.read_text()) == {"recipe": "ar-toy-cpu", "trainer": "ar"}
    plan.write_text(json.dumps({"recipe": "ar-toy-older", "trainer": "ar"}))
    fake_steps.clear()
    train_toy_bundle(tmp_path / "out", None)
    assert fake_steps == [("ar", "never")]
    (tmp_path / "out" / "bundle" / "models" / "toy-ar").rmdir()
    fake_steps.clear()
    train_toy_bundle(tmp_path / "out", None)
    assert fake_steps == [("ar", "auto")]  # begun under this plan's recipe: resumed


def test_the_intermediate_tokenizer_is_staged_but_not_shipped(tmp_path, fake_steps, monkeypatch):
    by_name = {s.name: s for s in STEPS}
    assert not by_name["tokenizer"].ships and by_name["tokenizer_hidden"].output == "models/toy-tokenizer"
    assert by_name["tokenizer_hidden"].recipe == "tokenizer-toy-hidden" and "tokenizer" in by_name["tokenizer_hidden"].needs
    assert by_name["video"].output == "models/toy-video" and by_name["video"].recipe == "video-toy-action-map"
    assert all(s.ships for s in STEPS if s.name != "tokenizer")
    import mdream.training.analyser
    import mdream.training.export
    import mdream.training.motion_reader

    written: list[str] = []
    record = lambda source, target, *a, **k: written.append(Path(target).name)  # noqa: E731
    for module, name in [(mdream.training.export, "export_model"), (mdream.training.analyser, "install_face_embedder"),
                         (mdream.training.analyser, "install_frame_analyser"),
                         (mdream.training.motion_reader, "install_motion_reader")]:
        monkeypatch.setattr(module, name, record)
    train_toy_bundle(tmp_path / "out", tmp_path / "dest")
    assert (tmp_path / "out" / "bundle" / "models" / "toy-tokenizer-base").is_dir()
    # the evaluator's models are installed into DEST/eval, the rest exported by name
    assert written == ["toy-clip", "eval", "toy-tokenizer", "toy-ar", "eval", "eval"]


def test_steps_are_pinned_to_the_shipped_runs():
    """No step trains against the clock (a faster machine would train another bundle), and the pinned step counts
    are those of the shipped models' own records."""
    from mdream.training.config import load_recipe
    from mdream.training.toy_bundle import ASSETS, EXPECTED_NOTE, _settings

    for step in STEPS:
        config, _ = _settings(_config_class(step), step, {}, smoke=False)
        assert getattr(config, "max_minutes", 0.0) == 0.0, step.name
        state = ASSETS / step.output / "state.json"
        if step.ships and state.is_file():
            assert config.steps == json.loads(state.read_text())["step"], step.name
        if step.recipe is not None:  # the recipe itself is untouched: users keep its budget
            _, values = load_recipe(_config_class(step), step.recipe, step.trainer)
            assert set(step.pinned) <= {"steps", "max_minutes"} and "steps" in values
    shipped = {s.name for s in STEPS if (ASSETS / s.output / "state.json").is_file()}
    assert {"tokenizer_hidden", "ar", "video"} <= shipped  # the check above ran where it matters
    total = sum(s.expected_minutes for s in STEPS)
    assert f"{total:.0f} min ({total // 60:.0f} h {total % 60:.0f} min)" in EXPECTED_NOTE


def _config_class(step):
    from mdream.training.analyser import AnalyserTrainingConfig, FaceTrainingConfig
    from mdream.training.ar import ARTrainingConfig
    from mdream.training.clip import ClipTrainingConfig
    from mdream.training.motion_reader import MotionReaderTrainingConfig
    from mdream.training.tokenizer import TokenizerTrainingConfig
    from mdream.training.video import VideoTrainingConfig

    return {"clip": ClipTrainingConfig, "face-embedder": FaceTrainingConfig, "tokenizer": TokenizerTrainingConfig,
            "ar": ARTrainingConfig, "analyser": AnalyserTrainingConfig, "motion-reader": MotionReaderTrainingConfig,
            "video": VideoTrainingConfig}[step.trainer]


def test_a_smoke_run_folder_is_not_taken_for_a_full_one(tmp_path, fake_steps):
    train_toy_bundle(tmp_path / "out", None, smoke=True)
    from mdream.errors import InputError

    with pytest.raises(InputError, match="smoke"):
        train_toy_bundle(tmp_path / "out", None, smoke=False)
    with pytest.raises(InputError, match="resume"):
        train_toy_bundle(tmp_path / "other", None, resume="runs/x")


def _dtypes(path: Path) -> set[str]:
    """The dtypes of a safetensors file's tensors (F16, F32, I64, ...)."""
    with safe_open(str(path), "pt") as f:
        return {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118


@pytest.mark.slow
def test_smoke_bundle_trains_in_order_feeds_each_step_and_makes_a_movie(tmp_path):
    from mdream.cli.main import app
    from mdream.models.bundle import ModelBundle
    from mdream.training.export import weights_key

    out, dest = tmp_path / "out", tmp_path / "dest"
    seen: list[str] = []
    report = train_toy_bundle(out, dest, smoke=True, on_step=lambda s: seen.append(s.name))
    assert seen == ORDER and [s.name for s in report.steps if s.status == "trained"] == ORDER

    staged = out / "bundle"
    clip, onnx = staged / "models" / "toy-clip", staged / "eval" / "toy_face_recognition.onnx"
    encoder = staged / "models" / "toy-tokenizer" / "encoder"
    manifest = json.loads((out / "manifest.json").read_text())
    steps = {s["name"]: s for s in manifest["steps"]}
    assert [s["name"] for s in manifest["steps"]] == ORDER
    assert manifest["smoke"] is True and manifest["fp16"] is True
    finished = [steps[n]["finished_at"] for n in ORDER]
    assert finished == sorted(finished)
    assert steps["clip"]["recipe"] == "clip-toy" and steps["clip"]["seeds"] == {"seed": 0, "world_seed": 0}

    # each later step read the earlier steps' fresh outputs (recorded in the manifest and its run's settings)
    tok_cfg = json.loads((out / "tokenizer" / "train_config.json").read_text())
    assert tok_cfg["clip"] == str(clip.resolve()) and tok_cfg["face_embedder"] == str(onnx.resolve())
    assert steps["tokenizer"]["inputs"] == {"clip": str(clip.resolve()), "face_embedder": str(onnx.resolve())}
    # the fine-tuning started from the staged from-scratch tokenizer (not the shipped one), with its recipe's settings
    base = staged / "models" / "toy-tokenizer-base"
    hidden_cfg = json.loads((out / "tokenizer_hidden" / "train_config.json").read_text())
    assert hidden_cfg["init"] == str(base.resolve()) and hidden_cfg["lr"] == 0.0003
    assert hidden_cfg["clip"] == str(clip.resolve()) and hidden_cfg["face_embedder"] == str(onnx.resolve())
    assert steps["tokenizer_hidden"]["recipe"] == "tokenizer-toy-hidden"
    assert steps["tokenizer_hidden"]["inputs"]["init"] == str(base.resolve())
    assert not (dest / "models" / "toy-tokenizer-base").exists()
    assert (dest / "eval" / "motion_reader" / "model.safetensors").is_file()
    assert steps["motion_reader"]["recipe"] == "motion-reader-toy"
    ar_cfg = json.loads((out / "ar" / "train_config.json").read_text())
    assert ar_cfg["keyframe_encoder"] == str(encoder.resolve())
    assert ar_cfg["text_encoder"] == str(clip.resolve()) and ar_cfg["face_embedder"] == str(onnx.resolve())
    ar_data = json.loads((out / "ar" / "data" / "train" / "index.json").read_text())
    assert ar_data["info"]["keyframe_encoder"] == str(encoder.resolve())
    assert (staged / "models" / "toy-tokenizer" / "encoder" / "keyframe_encoder.json").is_file()
    assert json.loads((encoder / "keyframe_encoder.json").read_text())["vision_model"] == "../../toy-clip"
    video_cfg = json.loads((out / "video" / "train_config.json").read_text())
    assert video_cfg["image_encoder"] == str(clip.resolve()) and video_cfg["clips"] == 4
    assert steps["video"]["inputs"] == {"image_encoder": str(clip.resolve())}
    assert steps["video"]["recipe"] == "video-toy-action-map" and steps["video"]["seeds"]["data_seed"] == 0
    # the video model is trained from the first step (no init), with the action map
    assert video_cfg["init"] == "" and video_cfg["action_map"] is True
    assert json.loads((dest / "models" / "toy-video" / "video.json").read_text())["action_map"] is True

    # DEST: the same models, fp16 on disk, the tokenizer's CLIP reference pointing at DEST's own CLIP
    assert weights_key(dest / "models" / "toy-clip") == weights_key(clip)
    assert json.loads((dest / "models" / "toy-tokenizer" / "encoder" / "keyframe_encoder.json").read_text())[
        "vision_model"] == "../../toy-clip"
    for weights in [dest / "models" / "toy-clip" / "model.safetensors",
                    dest / "models" / "toy-ar" / "keyframe_ar.safetensors",
                    dest / "models" / "toy-tokenizer" / "decoder" / "unet" / "diffusion_pytorch_model.safetensors",
                    dest / "eval" / "frame_analyser" / "model.safetensors",
                    dest / "eval" / "motion_reader" / "model.safetensors",
                    dest / "models" / "toy-video" / "unet" / "diffusion_pytorch_model.safetensors",
                    dest / "models" / "toy-video" / "image_encoder" / "model.safetensors"]:
        assert "F16" in _dtypes(weights) and "F32" not in _dtypes(weights), weights
    # the video model holds the staged CLIP's vision tower (its frozen image encoder) and names no machine path
    video = dest / "models" / "toy-video"
    assert json.loads((video / "train_config.json").read_text())["image_encoder"] == "image_encoder"
    with safe_open(str(video / "image_encoder" / "model.safetensors"), "pt") as f, \
            safe_open(str(clip / "model.safetensors"), "pt") as g:
        tower = [k for k in f.keys() if k.startswith("vision_model.")]  # noqa: SIM118
        assert tower and all(torch.equal(f.get_tensor(k).float(), g.get_tensor(k).float()) for k in tower)
    bundle = ModelBundle.load(dest / "bundles" / "toy" / "bundle.yaml")
    for name in ("text_encoder", "keyframe_encoder", "keyframe_decoder", "keyframe_ar", "video"):
        model = bundle.load_component(name)
        assert {p.dtype for p in model.parameters()} == {torch.float32}, name
    assert bundle.load_component("face_embedder") is not None
    from mdream.eval.motion_reader import MotionReader

    assert MotionReader.from_pretrained(dest / "eval" / "motion_reader").training_facts["steps"] == 2

    # a movie from a tiny script with the freshly trained bundle
    data = small_script_dict(n_shots=2)
    data["output"]["model_bundle"] = str(dest / "bundles" / "toy")
    script = write_script(tmp_path / "movie", data)
    result = CliRunner().invoke(app, ["generate", str(script), "-o", str(tmp_path / "movie.mp4"), "--device", "cpu",
                                      "--json"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "movie.mp4").stat().st_size > 0
    stages = {r["stage"]: r for r in json.loads(result.stdout)["stages"]}
    assert len(stages["video"]["produced"]) == 2  # a clip per shot, drawn by the bundle's video model

    # a rerun (through the command line) skips every finished step and trains nothing
    checkpoints = sorted(str(p) for p in out.rglob("state.json"))
    again = CliRunner().invoke(app, ["train", "bundle", "--out", str(out), "--dest", str(dest), "--smoke", "--json"])
    assert again.exit_code == 0, again.output
    statuses = {s["name"]: s["status"] for s in json.loads(again.stdout)["steps"]}
    assert [statuses[n] for n in ORDER] == ["skipped"] * len(ORDER)
    assert sorted(str(p) for p in out.rglob("state.json")) == checkpoints


def test_export_fp16_stores_half_weights_that_load_back_into_float32(tmp_path):
    from safetensors.torch import load_file, save_file

    from mdream.models.encoders import TextEncoder
    from mdream.training.export import export_model

    # a float32 copy of the shipped toy CLIP (which ships in float16), as a training run leaves it
    shipped = tmp_path / "float32"
    shutil.copytree(toy_bundle.ASSETS / "models" / "toy-clip", shipped)
    weights = load_file(str(shipped / "model.safetensors"))
    save_file({k: v.float() if v.is_floating_point() else v for k, v in weights.items()}, str(shipped / "model.safetensors"))
    assert _dtypes(shipped / "model.safetensors") <= {"F32", "I64"}
    result = export_model(shipped, tmp_path / "toy-clip", fp16=True)
    assert _dtypes(tmp_path / "toy-clip" / "model.safetensors") <= {"F16", "I64"}
    assert any("float16" in note for note in result.notes)
    assert (tmp_path / "toy-clip" / "model.safetensors").stat().st_size < 0.6 * (shipped / "model.safetensors").stat().st_size
    half, full = TextEncoder.from_pretrained(tmp_path / "toy-clip"), TextEncoder.from_pretrained(shipped)
    assert {p.dtype for p in half.parameters()} == {torch.float32}
    texts = ["Ada walks in the harbor.", "An empty forest at noon."]
    assert torch.allclose(half.encode(texts), full.encode(texts), atol=2e-2)


def test_store_half_keeps_what_float16_cannot_hold(tmp_path):
    from safetensors.torch import save_file

    from mdream.training.export import store_half

    save_file({"small": torch.ones(3), "huge": torch.full((2,), 1e6), "ids": torch.arange(3)}, str(tmp_path / "w.safetensors"))
    notes: list[str] = []
    assert store_half(tmp_path, notes) == 1
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "w.safetensors"))
    assert (state["small"].dtype, state["huge"].dtype, state["ids"].dtype) == (torch.float16, torch.float32, torch.int64)
    assert "huge" in notes[0]
    save_file({"h": torch.ones(2, dtype=torch.float16)}, str(tmp_path / "h.safetensors"))
    half_before = (tmp_path / "h.safetensors").read_bytes()
    store_half(tmp_path)
    assert (tmp_path / "h.safetensors").read_bytes() == half_before  # nothing to halve: left byte for byte
    assert load_file(str(tmp_path / "w.safetensors"))["huge"].dtype == torch.float32


def test_a_step_clock_sums_the_minutes_of_every_attempt(tmp_path):
    from mdream.training.toy_bundle import StepClock

    path = tmp_path / "step" / "bundle-minutes.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"minutes": 12.5, "attempts": 2}))  # two earlier attempts, killed
    with StepClock(path, fresh=False, every=0.01) as clock:
        time.sleep(0.05)
        assert json.loads(path.read_text())["attempts"] == 3  # the running total is on disk while the step runs
    assert 12.5 < clock.minutes() < 12.6
    assert json.loads(path.read_text()) == {"minutes": round(clock.minutes(), 3), "attempts": 3}
    with StepClock(path, fresh=True) as again:  # a step that starts over starts at 0
        pass
    assert again.minutes() < 0.1 and json.loads(path.read_text())["attempts"] == 1
    path.write_text("{not json")  # an unreadable record counts as no earlier attempt
    assert StepClock(path, fresh=False).before == 0.0
    path.write_text("[1, 2]")  # nor does a record that is not an object
    assert StepClock(path, fresh=False).before == 0.0
