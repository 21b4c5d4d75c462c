"""Toy training through the CLI: tiny models, a few steps, checkpoints, resume, export, evaluation."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mdream.models.decoder import KeyframeDecoder
from mdream.models.encoders import KeyframeEncoder, TextEncoder
from mdream.training.cli import app
from mdream.training.common import lr_at, resolve_resume
from mdream.training.config import settings_docs, settings_fields
from mdream.training.tokenizer import TokenizerTrainingConfig

runner = CliRunner()

TINY_CLIP = ["--hidden-size", "16", "--num-layers", "1", "--num-heads", "2", "--patch-size", "8", "--projection-dim", "16",
             "--batch-size", "16", "--grad-accum", "2", "--num-frames", "64", "--val-frames", "32",
             "--checkpoint-every", "1", "--eval-every", "2"]
TINY_TOKENIZER = ["--face-embedder", "none", "--num-frames", "48", "--batch-size", "4", "--unet-widths", "8,16",
                  "--layers-per-block", "1", "--token-dim", "16", "--compressor-width", "16", "--compressor-layers", "1",
                  "--cross-attention-dim", "16", "--pooled-dim", "16", "--checkpoint-every", "1", "--log-every", "1",
                  # a plain loss without the face group: the toy loss weights and descriptions are tested on their own
                  "--no-character-text", "--character-weight", "1", "--lookalike-share", "0"]


def invoke(args: list[str]):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip")
    invoke(["clip", "--out", str(out), "--steps", "2", *TINY_CLIP])
    return out


def test_every_config_field_has_help():
    from mdream.training.analyser import AnalyserTrainingConfig, FaceTrainingConfig
    from mdream.training.clip import ClipTrainingConfig

    for config_cls in (TokenizerTrainingConfig, ClipTrainingConfig, AnalyserTrainingConfig, FaceTrainingConfig):
        # fields inherited from LoopConfig keep its docstrings, also where the subclass changes the default;
        # a section's settings (toy_loss.character_weight) have theirs
        docs = settings_docs(config_cls)
        assert set(docs) == {path for path, _, _ in settings_fields(config_cls)}
        assert all(docs.values()), [k for k, v in docs.items() if not v]
    assert settings_docs(ClipTrainingConfig)["steps"] == "Optimizer steps."
    assert "toy_loss.character_weight" in settings_docs(TokenizerTrainingConfig)
    assert ClipTrainingConfig().batch_size == 256 and TokenizerTrainingConfig().batch_size == 32
    text = runner.invoke(app, ["tokenizer", "--help"], terminal_width=200).output
    for option in ("--num-tokens", "--drop-faces", "--snr-gamma", "--resume", "--grad-accum", "--config",
                   "--character-weight", "--lookalike-share", "--no-character-text"):
        assert option in text
    assert "--head-weight" not in text and "--lookalike-split" not in text  # measured and not adopted: removed


def test_lr_schedule_warms_up_then_decays():
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(50, 100, 1.0, 10) < lr_at(20, 100, 1.0, 10)
    # a time-limited run decays by whichever runs out first: its steps or its time
    assert lr_at(20, 100, 1.0, 10, time_fraction=1.0) == pytest.approx(0.1)
    assert lr_at(50, 100, 1.0, 10, time_fraction=0.1) == pytest.approx(lr_at(50, 100, 1.0, 10))
    # a warm restart: the first cosine ends at step 40, then the one over 100 steps goes on from its step 40
    assert lr_at(39, 100, 1.0, 10, restart_at=40) == pytest.approx(lr_at(39, 40, 1.0, 10))
    assert lr_at(39, 100, 1.0, 10, restart_at=40) < 0.11
    assert lr_at(40, 100, 1.0, 10, restart_at=40) == pytest.approx(lr_at(40, 100, 1.0, 10))
    assert lr_at(40, 100, 1.0, 10, restart_at=40) > 0.6
    assert lr_at(100, 100, 1.0, 10, restart_at=40) == pytest.approx(0.1)


def test_clip_training_resumes_and_exports(clip_run):
    saved = json.loads((clip_run / "train_config.json").read_text())
    assert saved["hidden_size"] == 16 and saved["steps"] == 2
    assert resolve_resume("auto", clip_run).name == "step-0000002"
    invoke(["clip", "--out", str(clip_run), "--steps", "3", *TINY_CLIP])
    state = json.loads((clip_run / "checkpoints" / "step-0000003" / "state.json").read_text())
    assert state["step"] == 3 and 0 <= state["retrieval_top1"] <= 1
    assert not (clip_run / "checkpoints" / "step-0000001").exists()  # keep_checkpoints=2 prunes old ones
    text = TextEncoder.from_pretrained(clip_run / "final").encode(["Wide shot of the harbor."])
    assert text.shape == (1, 16)


def test_clip_training_stops_when_its_time_budget_is_spent(tmp_path):
    result = invoke(["clip", "--out", str(tmp_path), "--steps", "50", "--max-minutes", "0.00001", *TINY_CLIP])
    assert "budget" in result.output
    state = json.loads((tmp_path / "checkpoints" / "step-0000001" / "state.json").read_text())
    assert state["step"] == 1 and state["elapsed_s"] > 0 and state["retrieval_top1"] is not None
    assert (tmp_path / "final" / "training_summary.json").is_file()


def test_resume_path_must_be_a_checkpoint(tmp_path):
    result = runner.invoke(app, ["clip", "--out", str(tmp_path), "--resume", str(tmp_path / "nope"), *TINY_CLIP])
    assert result.exit_code == 2
    assert "no complete checkpoint" in result.output


def test_tokenizer_training_resume_and_render(clip_run, tmp_path):
    out = tmp_path / "tok"
    args = ["tokenizer", "--out", str(out), "--clip", str(clip_run / "final"), *TINY_TOKENIZER]
    invoke([*args, "--steps", "2"])
    first = json.loads((out / "checkpoints" / "step-0000002" / "state.json").read_text())
    assert np.isfinite(first["loss"])
    result = invoke([*args, "--steps", "3"])
    assert "resumed from" in result.output
    checkpoint = out / "checkpoints" / "step-0000003"
    assert json.loads((checkpoint / "train_config.json").read_text())["steps"] == 3
    from mdream.training.tokenizer import export_tokenizer

    # a resumed run builds its models and loads the training state into them: no model records a run-folder path
    assert not any("_name_or_path" in json.loads(f.read_text()) for f in checkpoint.rglob("config.json"))
    # a model loaded from a folder records where it came from (diffusers' _name_or_path); the export drops it
    unet_config = checkpoint / "decoder" / "unet" / "config.json"
    unet_config.write_text(json.dumps({**json.loads(unet_config.read_text()), "_name_or_path": str(out)}))
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "eval.json").write_text("{}")  # a stale record from other weights must not survive an export
    export_tokenizer(checkpoint, shipped, num_inference_steps=2, guidance_scale=1.0, identity_guidance_scale=0.0)
    record = json.loads((shipped / "train_config.json").read_text())
    assert record["steps"] == 3 and not (shipped / "eval.json").exists()
    # this run's CLIP lies outside the package: the export carries a copy and the record names it; the packaged
    # ones would read toy / auto
    assert record["clip"] == "clip" and record["face_embedder"] in ("auto", "none")
    assert not any("_name_or_path" in json.loads(f.read_text()) for f in shipped.rglob("config.json"))
    encoder = KeyframeEncoder.from_pretrained(checkpoint / "encoder")
    decoder = KeyframeDecoder.from_pretrained(checkpoint / "decoder")
    frames = np.load(out / "frames.npz")["frames"][:2]
    tokens = encoder.encode(frames)
    assert tokens.shape == (2, 2, 16)
    text = TextEncoder.from_pretrained(clip_run / "final").encode(["a", "b"])
    a = decoder.generate(tokens, text_embed=text, num_inference_steps=2, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    b = decoder.generate(tokens, text_embed=text, num_inference_steps=2, guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert a.images.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(a.images, b.images)


def test_tokenizer_training_stops_when_its_time_budget_is_spent(clip_run, tmp_path):
    out = tmp_path / "tok"
    # a budget of 0.6 ms is spent after the first step: the run stops there, far short of its 50 steps
    result = invoke(["tokenizer", "--out", str(out), "--clip", str(clip_run / "final"), *TINY_TOKENIZER,
                     "--steps", "50", "--max-minutes", "0.00001"])
    assert "budget" in result.output
    state = json.loads((out / "checkpoints" / "step-0000001" / "state.json").read_text())
    assert state["step"] == 1 and state["elapsed_s"] > 0
    assert resolve_resume("auto", out).name == "step-0000001"
    # resuming carries the spent time: the budget is still spent, so no further step is taken
    invoke(["tokenizer", "--out", str(out), "--clip", str(clip_run / "final"), *TINY_TOKENIZER, "--steps", "50"])
    assert resolve_resume("auto", out).name == "step-0000001"


def test_tokenizer_training_runs_as_two_processes_under_torchrun(clip_run, tmp_path):
    """The multi-process path (DDP over gloo on CPU, as over NCCL on several GPUs): data prepared once, one checkpoint."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "tok"
    mdream_cli = Path(sys.executable).parent / "mdream"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533", str(mdream_cli),
         "train", "tokenizer", "--out", str(out), "--clip", str(clip_run / "final"), *TINY_TOKENIZER, "--steps", "2"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert output.count("done:") == 2  # both ranks finished
    assert output.count("embedding 48 descriptors") == 1  # the main rank prepared the data, the other read it
    state = json.loads((out / "checkpoints" / "step-0000002" / "state.json").read_text())
    assert state["step"] == 2 and np.isfinite(state["loss"])


def test_tokenizer_eval_command_reports_probe(clip_run, tmp_path):
    out = tmp_path / "tok"
    invoke(["tokenizer", "--out", str(out), "--clip", str(clip_run / "final"), *TINY_TOKENIZER, "--steps", "1"])
    from mdream.training.evaluate_tokenizer import evaluate_checkpoint

    report = evaluate_checkpoint(out / "checkpoints" / "step-0000001", frames=8, num_inference_steps=1,
                                 conditions="tokens,null", out_json=tmp_path / "eval.json", probe_train_frames=32,
                                 grid=tmp_path / "grid.png")
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert set(saved["results"]) >= {"ground_truth"}
    assert set(report.probe) == {"scene", "left", "center", "right", "palette", "trousers", "trousers_left",
                                 "trousers_center", "trousers_right"}
    assert all(0 <= v <= 1 for v in report.probe.values())
    from PIL import Image

    # ground truth + one row per condition, 8 frames of 32 px each, shown 4x
    assert Image.open(tmp_path / "grid.png").size == (8 * 32 * 4, 3 * 32 * 4)
    assert saved["scheduler"] == "ddim"  # the decoder's own
    # every scored condition has its error breakdown, consistent with its cast accuracy
    assert set(saved["errors"]) == set(saved["results"])
    for name, errors in saved["errors"].items():
        frames_right = sum(v["cast"] * v["frames"] for v in errors["by_camera"].values())
        assert frames_right == pytest.approx(saved["results"][name]["cast"] * 8)
        assert sum(c["count"] for c in errors["confusions"]) <= errors["misread_slots"]
    # another sampler by name (same seeds, other pixels); an unknown one is refused before any work
    other = evaluate_checkpoint(out / "checkpoints" / "step-0000001", frames=8, num_inference_steps=2,
                                conditions="tokens", probe_train_frames=0, scheduler="ddpm")
    assert other.scheduler == "ddpm" and set(other.results) == {"ground_truth", "tokens"}
    bad = runner.invoke(app, ["tokenizer-eval", str(out / "checkpoints" / "step-0000001"), "--scheduler", "nope"])
    assert bad.exit_code == 2 and "Unknown scheduler" in bad.output
    # the report names the analyser that scored it; a named analyser folder must hold one
    assert saved["analyser"]["path"].endswith("frame_analyser") and saved["analyser"]["steps"] >= 1
    missing = runner.invoke(app, ["tokenizer-eval", str(out / "checkpoints" / "step-0000001"), "--frames", "8",
                                  "--probe-frames", "0", "--analyser", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "No frame analyser" in missing.output
    # an analyser with hidden-state heads also reads the palette and trousers back from the renders
    from mdream.eval.frame_analyser import FrameAnalyser, FrameAnalyserConfig
    from mdream.toyworld import make_world

    world = make_world(0)
    FrameAnalyser(FrameAnalyserConfig(
        num_scenes=len(world.scenes), num_characters=len(world.characters), widths=(4, 4, 4, 4), feature_dim=8,
        scene_ids=[x.id for x in world.scenes], character_ids=[x.id for x in world.characters],
        num_palettes=3, num_trousers=3)).save_pretrained(tmp_path / "hidden_analyser")
    hidden = evaluate_checkpoint(out / "checkpoints" / "step-0000001", frames=8, num_inference_steps=1,
                                 conditions="tokens", probe_train_frames=0, analyser=tmp_path / "hidden_analyser")
    assert {"palette", "trousers", "palette_agree", "trousers_agree"} <= set(hidden.results["tokens"])
    assert hidden.results["ground_truth"]["palette_agree"] == 1.0


def test_cast_errors_break_down_misread_characters():
    """The error breakdown counts each misread slot once, names single-attribute siblings, splits by camera."""
    from mdream.toyworld import make_world
    from mdream.toyworld.episode import CastMember, ShotSpec
    from mdream.training.evaluate_tokenizer import cast_errors

    world = make_world(0)
    names = [c.id for c in world.characters]
    a, b, attribute = world.single_attribute_pairs[0]
    other = next(n for n in names if n not in (a, b))
    scene = world.scenes[0].id
    shots = [ShotSpec(scene, (CastMember(a, "left", "stand", "neutral"),), "wide"),
             ShotSpec(scene, (CastMember(a, "left", "stand", "neutral"), CastMember(other, "right", "stand", "neutral")), "close-up"),
             ShotSpec(scene, (), "wide")]
    chars = np.array([[names.index(a), -1, -1], [names.index(a), -1, names.index(other)], [-1, -1, -1]])
    read = chars.copy()
    read[0, 0] = names.index(b)  # the sibling
    read[1, 1] = names.index(other)  # someone where nobody stands
    errors = cast_errors(read, chars, shots, world)
    assert errors["misread_slots"] == 2
    assert errors["by_camera"] == {"close-up": {"cast": 0.0, "frames": 1}, "wide": {"cast": 0.5, "frames": 2}}
    assert errors["by_cast_size"]["0"] == {"cast": 1.0, "frames": 1}
    assert {"true": a, "read": b, "differs_in": attribute, "count": 1} in errors["confusions"]
    assert {"true": "empty", "read": other, "differs_in": "", "count": 1} in errors["confusions"]
    assert cast_errors(chars, chars, shots, world)["confusions"] == []


def test_tokenizer_training_with_faces_trains_the_identity_head(clip_run, tmp_path):
    """With the (shipped toy) face embedder: the face group, the identity auxiliary head, cached CLIP features."""
    out = tmp_path / "tok"
    tiny = [a for a in TINY_TOKENIZER if a not in ("--face-embedder", "none")]
    args = ["tokenizer", "--out", str(out), "--clip", str(clip_run / "final"), *tiny, "--photos-per-character", "2"]
    invoke([*args, "--steps", "1"])
    first = out / "checkpoints" / "step-0000001" / "train"
    assert (first / "identity_head" / "config.json").is_file()
    cache = np.load(out / "vision_features_layer-1.npz")
    assert cache["patches"].shape[0] == 48 and cache["pooled"].shape[0] == 48
    from mdream.models.compressor import TokenIdentityHead

    before = TokenIdentityHead.from_pretrained(first / "identity_head").embed_head.weight.detach().clone()
    result = invoke([*args, "--steps", "2"])
    assert "resumed from" in result.output
    after = TokenIdentityHead.from_pretrained(out / "checkpoints" / "step-0000002" / "train" / "identity_head")
    assert not torch.equal(before, after.embed_head.weight)  # the head kept training after the resume
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["identity_weight"] == 1.0 and saved["pooled_faces"] == "slots"
    from mdream.training.evaluate_tokenizer import evaluate_checkpoint

    report = evaluate_checkpoint(out / "checkpoints" / "step-0000002", frames=8, num_inference_steps=1,
                                 conditions="tokens", probe_train_frames=0)
    assert set(report.token_identity) == {"occupied_slot_identity", "occupancy", "whole_cast"}
    assert all(0 <= v <= 1 for v in report.token_identity.values())


def test_tokenizer_training_with_character_descriptions_in_the_face_slots(clip_run, tmp_path):
    """--character-text: each slot's description embedding trains with the faces; evaluation passes it too."""
    out = tmp_path / "tok"
    tiny = [a for a in TINY_TOKENIZER if a not in ("--face-embedder", "none")]
    base = ["tokenizer", "--clip", str(clip_run / "final"), *tiny, "--photos-per-character", "2", "--steps", "1"]
    invoke([*base, "--out", str(out), "--character-text"])
    decoder = KeyframeDecoder.from_pretrained(out / "checkpoints" / "step-0000001" / "decoder")
    assert decoder.context.character_text_proj is not None
    assert decoder.context.config.character_text_dim == TextEncoder.from_pretrained(clip_run / "final").embed_dim
    from mdream.training.evaluate_tokenizer import evaluate_checkpoint

    report = evaluate_checkpoint(out / "checkpoints" / "step-0000001", frames=8, num_inference_steps=1,
                                 conditions="tokens+faces", probe_train_frames=0)
    assert set(report.results) == {"ground_truth", "tokens+faces"}
    bad = runner.invoke(app, [*base, "--out", str(tmp_path / "nofaces"), "--character-text", "--face-embedder", "none"])
    assert bad.exit_code == 2 and "needs the face group" in bad.output


def test_tokenizer_training_can_start_from_another_runs_unet(clip_run, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    base = ["--clip", str(clip_run / "final"), *TINY_TOKENIZER, "--steps", "1"]
    invoke(["tokenizer", "--out", str(first), *base])
    result = invoke(["tokenizer", "--out", str(second), *base, "--init-unet", str(first), "--lr", "0"])
    assert "UNet initialised from" in result.output
    # lr 0: the second run's UNet is exactly the first run's exported (EMA) UNet
    a = KeyframeDecoder.from_pretrained(first / "checkpoints" / "step-0000001" / "decoder").unet.state_dict()
    b = KeyframeDecoder.from_pretrained(second / "checkpoints" / "step-0000001" / "decoder").unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    bad = runner.invoke(app, ["tokenizer", "--out", str(tmp_path / "third"), *base, "--init-unet", str(tmp_path / "nope")])
    assert bad.exit_code == 2 and "no UNet there" in bad.output


def test_tokenizer_training_weights_the_characters(clip_run, tmp_path):
    """--character-weight renders figure masks with the frames (cached with them) and trains on the weighted loss."""
    plain, weighted = tmp_path / "plain", tmp_path / "weighted"
    base = ["--clip", str(clip_run / "final"), *TINY_TOKENIZER, "--steps", "1"]
    invoke(["tokenizer", "--out", str(plain), *base])
    assert "figures" not in np.load(plain / "frames.npz")
    # a resume that turns the weight on re-renders the cache with masks: the same frames, now with figures
    invoke(["tokenizer", "--out", str(plain), *TINY_TOKENIZER, "--clip", str(clip_run / "final"), "--steps", "2",
            "--character-weight", "4"])
    invoke(["tokenizer", "--out", str(weighted), *base, "--character-weight", "4"])
    from mdream.training.data import FrameSet

    before, after = np.load(plain / "frames.npz"), FrameSet.load(weighted / "frames.npz")
    assert "figures" in before
    np.testing.assert_array_equal(after.frames, before["frames"])
    assert after.figures.shape == (48, 32, 32) and after.figures.any()
    # frames without a cast have no figure pixels
    assert not after.figures[(after.chars < 0).all(axis=1)].any()
    state = json.loads((weighted / "checkpoints" / "step-0000001" / "state.json").read_text())
    assert np.isfinite(state["loss"])
    assert json.loads((weighted / "train_config.json").read_text())["toy_loss"]["character_weight"] == 4.0
    bad = runner.invoke(app, ["tokenizer", "--out", str(tmp_path / "bad"), *base, "--character-weight", "4",
                              "--data", str(tmp_path / "some-dataset")])
    assert bad.exit_code == 2 and "figure masks" in bad.output
    assert not (tmp_path / "bad").exists()  # refused before the run folder was made
    bad = runner.invoke(app, ["tokenizer", "--out", str(tmp_path / "bad2"), *base, "--character-weight", "0"])
    assert bad.exit_code == 2 and "must be > 0" in bad.output
    for flags, message in ((["--position-channels", "3"], "0 or 2"), (["--attention-heads", "3"], "must divide")):
        bad = runner.invoke(app, ["tokenizer", "--out", str(tmp_path / "bad3"), *base, *flags])
        assert bad.exit_code == 2 and message in bad.output and "Traceback" not in bad.output
        assert not (tmp_path / "bad3").exists()


def test_tokenizer_training_weights_the_lookalike_pixels(clip_run, tmp_path):
    """--lookalike-share and --trousers-share render their masks with the frames and train; bad values and --data
    fail first."""
    from mdream.training.data import FrameSet

    run = tmp_path / "look"
    base = ["--clip", str(clip_run / "final"), *TINY_TOKENIZER, "--out", str(run)]
    invoke(["tokenizer", *base, "--steps", "1", "--character-weight", "4", "--lookalike-share", "0.2",
                          "--trousers-share", "0.1"])
    frames = FrameSet.load(run / "frames.npz")
    shares = frames.lookalike_shares
    assert shares.shape == frames.figures.shape == (48, 32, 32) and shares.dtype == np.float32
    assert shares.any() and not shares[~(frames.chars >= 0).any(axis=1)].any()
    sums = shares.sum(axis=(1, 2))
    np.testing.assert_allclose(sums[sums > 0], 1.0, atol=5e-3)  # each frame's parts, saved as float16
    legs = frames.trousers_shares
    assert legs.shape == shares.shape and legs.any()
    # on the figures (a pixel where trousers match the ground closely enough to escape the figure mask may not be)
    assert (legs > 0)[~frames.figures].sum() < 0.1 * (legs > 0).sum()
    sums = legs.sum(axis=(1, 2))
    np.testing.assert_allclose(sums[sums > 0], 1.0, atol=5e-3)
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["toy_loss"] == {"character_weight": 4.0, "lookalike_share": 0.2, "trousers_share": 0.1}
    assert np.isfinite(json.loads((run / "checkpoints" / "step-0000001" / "state.json").read_text())["loss"])
    for flags, message in ((["--lookalike-share", "1"], "must be in [0, 1)"),
                           (["--lookalike-share", "0.6", "--trousers-share", "0.4"], "keep their sum below 1"),
                           (["--trousers-share", "0.2", "--data", str(tmp_path)], "--trousers-share need")):
        bad = runner.invoke(app, ["tokenizer", *base[:-2], "--out", str(tmp_path / "bad"), *flags])
        assert bad.exit_code == 2 and message in bad.output and "Traceback" not in bad.output, bad.output
        assert not (tmp_path / "bad").exists()


def test_damaged_run_caches_are_rebuilt_not_fatal(clip_run, tmp_path):
    """A truncated frames.npz or embedding cache (e.g. copied half-way) is rebuilt with a warning; the resume goes on."""
    out = tmp_path / "tok"
    tiny = [a for a in TINY_TOKENIZER if a not in ("--face-embedder", "none")]
    args = ["tokenizer", "--out", str(out), "--clip", str(clip_run / "final"), *tiny, "--photos-per-character", "2"]
    invoke([*args, "--steps", "1"])
    frames = np.load(out / "frames.npz")["frames"].copy()
    text = np.load(out / "descriptor_embeds.npz")["embeds"].copy()
    for name in ("frames.npz", "descriptor_embeds.npz", "face_bank.npz", "vision_features_layer-1.npz"):
        data = (out / name).read_bytes()
        (out / name).write_bytes(data[: len(data) // 2])
    result = invoke([*args, "--steps", "2"])
    assert "resumed from" in result.output and result.output.count("unreadable") == 4
    assert (out / "checkpoints" / "step-0000002" / "state.json").is_file()
    # rebuilt from the same seeds: the same frames and embeddings as before the damage
    np.testing.assert_array_equal(np.load(out / "frames.npz")["frames"], frames)
    np.testing.assert_allclose(np.load(out / "descriptor_embeds.npz")["embeds"], text, atol=1e-5)


def test_caches_copied_from_another_run_are_rebuilt_not_reused(clip_run, tmp_path):
    """Each run-folder cache is keyed by what it was made from: caches copied from a run with another seed (other
    frames, descriptors and face photos) are rebuilt, and what the run trains on is its own frames' data."""
    from mdream.training.common import content_key, model_key
    from mdream.training.data import FrameSet

    tiny = [a for a in TINY_TOKENIZER if a not in ("--face-embedder", "none")]
    base = ["tokenizer", "--clip", str(clip_run / "final"), *tiny, "--photos-per-character", "2", "--steps", "1"]
    first, second = tmp_path / "a", tmp_path / "b"
    invoke([*base, "--out", str(first)])
    second.mkdir()
    names = ("frames.npz", "descriptor_embeds.npz", "face_bank.npz", "vision_features_layer-1.npz")
    for name in names:
        shutil.copy(first / name, second / name)
    result = invoke([*base, "--out", str(second), "--seed", "1"])
    assert result.output.count("made from other inputs") == 4
    theirs, ours = FrameSet.load(first / "frames.npz"), FrameSet.load(second / "frames.npz")
    assert not np.array_equal(theirs.frames, ours.frames)
    with np.load(second / "vision_features_layer-1.npz") as z:
        assert str(z["key"]) == content_key("vision features", ours.frames, model_key(clip_run / "final"), -1)
    with np.load(second / "descriptor_embeds.npz") as z:
        assert str(z["key"]) != str(np.load(first / "descriptor_embeds.npz")["key"])
    # the same seed again: every cache is reused as it is
    again = invoke([*base, "--out", str(second), "--seed", "1", "--steps", "2"])
    assert "rendering" not in again.output and "made from other inputs" not in again.output


def test_an_option_typed_at_its_default_overrides_the_resumed_setting(clip_run, tmp_path):
    """On resume the saved settings hold, except the options typed now: --max-minutes 0 (the default) lifts a saved
    budget; an option left out keeps its saved value."""
    out = tmp_path / "run"
    base = ["tokenizer", "--clip", str(clip_run / "final"), *TINY_TOKENIZER, "--out", str(out)]
    invoke([*base, "--steps", "1", "--max-minutes", "30", "--drop-faces", "0.25"])
    invoke([*base, "--steps", "2", "--max-minutes", "0"])
    saved = json.loads((out / "train_config.json").read_text())
    assert (saved["steps"], saved["max_minutes"], saved["drop_faces"]) == (2, 0.0, 0.25)
    assert (out / "checkpoints" / "step-0000002").is_dir()


def test_a_clip_retrained_in_place_recomputes_the_caches_made_with_it(clip_run, tmp_path):
    """The CLIP features and descriptor embeddings are keyed by the CLIP's weights, not its path: new weights in the
    same folder rebuild both; the frames (made without the CLIP) are kept."""
    from safetensors.torch import load_file, save_file

    clip = tmp_path / "clip"
    shutil.copytree(clip_run / "final", clip)
    args = ["tokenizer", "--clip", str(clip), *TINY_TOKENIZER, "--out", str(tmp_path / "run")]
    invoke([*args, "--steps", "1"])
    before = np.load(tmp_path / "run" / "descriptor_embeds.npz")["embeds"].copy()
    weights = load_file(clip / "model.safetensors")
    for name in weights:
        weights[name] = weights[name] * 1.5
    save_file(weights, clip / "model.safetensors", metadata={"format": "pt"})
    result = invoke([*args, "--steps", "2"])
    assert "resumed from" in result.output
    assert result.output.count("made from other inputs") == 2 and "rendering" not in result.output
    after = np.load(tmp_path / "run" / "descriptor_embeds.npz")["embeds"]
    assert not np.allclose(before, after)


def test_exported_settings_name_the_packaged_models_portably(tmp_path):
    """The packaged CLIP and face embedder are recorded as toy / auto (not this machine's paths), in the shipped
    tokenizer's settings too; any other machine path is kept by its name only."""
    from mdream.training.tokenizer import DEFAULT_FACE_EMBEDDER, TOY_CLIP, portable_train_config

    record = tmp_path / "train_config.json"
    record.write_text(json.dumps({"clip": str(TOY_CLIP.resolve()), "face_embedder": str(DEFAULT_FACE_EMBEDDER),
                                  "data": str(tmp_path / "frames.npz")}))
    portable_train_config(record)
    assert json.loads(record.read_text()) == {"clip": "toy", "face_embedder": "auto", "data": "frames.npz"}
    shipped = json.loads((TOY_CLIP.parent / "toy-tokenizer" / "train_config.json").read_text())
    assert (shipped["clip"], shipped["face_embedder"]) == ("toy", "auto")


def test_the_hidden_state_head_learns_the_labels_and_needs_toy_frames(clip_run, tmp_path):
    import torch

    from mdream.training.data import frame_set
    from mdream.training.tokenizer import TokenHiddenHead

    # renders carry the hidden-state labels
    frames = frame_set("", 0, 6, 32, 0, None)
    assert frames.palette.shape == (6,) and frames.trousers.shape == (6, 3)
    assert ((frames.trousers >= 0) == (frames.chars >= 0)).all()
    # the head's loss: the palette's cross-entropy plus that of each worn pair of trousers; it falls when trained
    torch.manual_seed(0)
    head = TokenHiddenHead(num_tokens=2, token_dim=4, palettes=3, trousers=3)
    tokens = torch.randn(8, 2, 4)
    palette, trousers = torch.randint(0, 3, (8,)), torch.randint(-1, 3, (8, 3))
    logits_p, logits_t = head(tokens)
    worn = trousers >= 0
    expected = torch.nn.functional.cross_entropy(logits_p, palette) + torch.nn.functional.cross_entropy(
        logits_t[worn], trousers[worn])
    assert torch.allclose(head.loss(tokens, palette, trousers), expected)
    optimiser = torch.optim.Adam(head.parameters(), lr=1e-2)
    first = head.loss(tokens, palette, trousers).item()
    for _ in range(50):
        optimiser.zero_grad()
        head.loss(tokens, palette, trousers).backward()
        optimiser.step()
    assert head.loss(tokens, palette, trousers).item() < 0.5 * first
    # a training run logs it; frames without labels are refused before any step
    out = tmp_path / "tok"
    result = invoke(["tokenizer", "--out", str(out), "--clip", str(clip_run / "final"), *TINY_TOKENIZER, "--steps", "2",
                     "--hidden-weight", "1"])
    assert "hidden" in result.output
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["hidden_weight"] == 1.0
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (32, 32), (40 * i, 90, 120)).save(images / f"{i}.png")
    refused = runner.invoke(app, ["tokenizer", "--out", str(tmp_path / "refused"), "--clip", str(clip_run / "final"),
                                  *TINY_TOKENIZER, "--steps", "1", "--hidden-weight", "1", "--data", str(images)])
    assert refused.exit_code == 2 and "hidden-state labels" in refused.output
