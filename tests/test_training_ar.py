"""`mdream train ar`: encoded episodes (cache keys, held-out split), training windows, the CLI run, export, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from mdream.models.keyframe_ar import KeyframeAR, ShotCondition
from mdream.training.ar import ARTrainingConfig, ARTrainingModel, build_model, load_data, sample_window
from mdream.training.ar_data import (
    TOY_KEYFRAME_ENCODER,
    TOY_TEXT_ENCODER,
    render_episodes,
)
from mdream.training.cli import app
from mdream.training.config import RECIPES_DIR, load_recipe

runner = CliRunner()

TINY = ["--episodes", "3", "--episode-length", "5", "--val-episodes", "1", "--photos-per-character", "2",
        "--hidden-size", "32", "--num-layers", "1", "--num-heads", "2", "--gmm-components", "2", "--window", "4",
        "--batch-size", "2", "--eval-windows", "2", "--warmup", "1", "--checkpoint-every", "2", "--log-every", "1"]
TINY_CONFIG = ARTrainingConfig(episodes=3, episode_length=5, val_episodes=1, photos_per_character=2, hidden_size=32,
                               num_layers=1, num_heads=2, gmm_components=2, window=4, batch_size=2, eval_windows=2)


def said(capsys) -> str:
    """What the run printed on stderr, rich's line wrapping undone."""
    return " ".join(capsys.readouterr().err.split())


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    out = tmp_path_factory.mktemp("ar-data")
    return out, *load_data(TINY_CONFIG, out, progress=False)


def test_encoded_episodes_match_the_encode_stage_and_the_keyframe_encoder(encoded):
    from mdream.models.encoders import KeyframeEncoder, TextEncoder

    _, train, val = encoded
    assert len(train) == 15 and train.num_episodes == 3 and len(val) == 5 and val.num_episodes == 1
    assert train.tokens.shape == (15, 2, 128) and train.descriptor_embeds.shape == (15, 64)
    assert train.face_bank.shape == (28, 2, 512) and train.character_text.shape == (28, 64)
    # the same rows as the toy world renders them, encoded as the keyframes and encode stages encode them
    frames, chars, identifiers, descriptors = render_episodes(0, 0, 0, 3, 5, 32, progress=False)
    assert identifiers == train.identifiers and np.array_equal(chars, train.chars.numpy())
    tokens = KeyframeEncoder.from_pretrained(TOY_KEYFRAME_ENCODER).encode(frames[:4])
    assert torch.allclose(tokens, train.tokens[:4], atol=1e-5)
    text = TextEncoder.from_pretrained(TOY_TEXT_ENCODER).encode([descriptors[3], identifiers[3]])
    assert torch.allclose(text[0], train.descriptor_embeds[3], atol=1e-5)
    assert torch.allclose(text[1], train.identifier_embeds[3], atol=1e-5)
    # held out: other episodes, other face photos of the same characters
    _, _, val_ids, _ = render_episodes(0, 0, 3, 1, 5, 32, progress=False)
    assert val.identifiers == val_ids
    assert not torch.allclose(train.face_bank, val.face_bank)
    assert (train.face_bank * val.face_bank).sum(-1).mean() > 0.5  # the same people


def test_stale_cache_is_rebuilt_and_a_fresh_one_reused(encoded, capsys):
    import dataclasses
    import shutil

    out, train, _ = encoded
    again, _ = load_data(TINY_CONFIG, out, progress=False)
    assert "encoding" not in said(capsys) and torch.equal(again.tokens, train.tokens)
    # a cache copied into a run of another episode seed is encoded again, never reused
    other = out.parent / "ar-data-other"
    shutil.copytree(out, other)
    rebuilt, _ = load_data(dataclasses.replace(TINY_CONFIG, data_seed=1), other, progress=False)
    assert "encoded from other inputs" in said(capsys)
    assert rebuilt.identifiers != train.identifiers or not torch.equal(rebuilt.tokens, train.tokens)
    assert json.loads((other / "data" / "train" / "index.json").read_text())["info"]["seed"] == 1
    # a damaged shard is noticed and encoded again
    (other / "data" / "train" / "shard-00000.safetensors").write_bytes(b"broken")
    load_data(dataclasses.replace(TINY_CONFIG, data_seed=1), other, progress=False)
    assert "unreadable" in said(capsys)


def test_windows_faces_masking_and_reversal(encoded):
    _, train, _ = encoded
    rng = np.random.default_rng(0)
    w = sample_window(train, rng, 4, token_mask_prob=1.0)
    shots = w.sample.shots
    assert len(shots) == 4 and w.sample.tokens.shape == (4, 2, 128)
    assert w.masked.tolist() == [True, True, True, False]  # every earlier shot; never the last
    # faces: one photo of the slot's character, the same photo for a character throughout the window
    for s in shots:
        assert s.face_embeds.shape == (3, 512) and s.face_mask.dtype == torch.bool
        assert torch.all(s.face_embeds[~s.face_mask] == 0)
    seen: dict[int, torch.Tensor] = {}
    start = next(r for r in range(len(train)) if torch.equal(train.tokens[r], w.sample.tokens[0]))
    for i, s in enumerate(shots):
        for slot in torch.nonzero(s.face_mask).flatten().tolist():
            c = int(train.chars[start + i, slot])
            assert any(torch.allclose(s.face_embeds[slot], train.face_bank[c, p]) for p in range(2))
            assert torch.allclose(seen.setdefault(c, s.face_embeds[slot]), s.face_embeds[slot])
            assert torch.allclose(s.character_text_embeds[slot], train.character_text[c])
    mean = sample_window(train, rng, 4, mean_face_share=1.0)
    for s in mean.sample.shots:
        for slot in torch.nonzero(s.face_mask).flatten().tolist():
            assert abs(float(s.face_embeds[slot].norm()) - 1) < 1e-4
    back = sample_window(train, np.random.default_rng(0), 4, reverse_prob=1.0)
    fwd = sample_window(train, np.random.default_rng(0), 4)
    assert torch.equal(back.sample.tokens, fwd.sample.tokens.flip(0))


def test_training_forward_is_the_models_loss_without_masking(encoded):
    _, train, _ = encoded
    torch.manual_seed(0)
    model = ARTrainingModel(build_model(TINY_CONFIG, train, TOY_TEXT_ENCODER)).eval()
    windows = [sample_window(train, np.random.default_rng(i), 4) for i in range(2)]
    ours = model(windows)["loss"]
    theirs = model.model([w.sample for w in windows]).loss
    assert torch.allclose(ours, theirs, atol=1e-5)
    # masking changes the inputs of later shots and leaves the masked shots' later tokens out of the loss
    masked = [sample_window(train, np.random.default_rng(i), 4, token_mask_prob=1.0) for i in range(2)]
    out = model(masked)
    # the default generation window is the longest training sequence
    longest = max(model.model.sequence(sample_window(train, np.random.default_rng(i), 4).sample)[0].shape[0]
                  for i in range(20))
    assert longest <= model.model.config.context_window <= longest + 4 * 8
    assert out["targets"].shape[0] == 2 * (3 * 1 + 2)  # per window: tok_0 of 3 masked shots, both of the last
    assert not torch.allclose(out["loss"], ours)


def test_cli_trains_exports_resumes(tmp_path):
    out, export = tmp_path / "run", tmp_path / "export"
    result = invoke("ar", "--out", str(out), *TINY, "--steps", "2", "--export", str(export))
    assert "held-out val_loss" in result.output and "token_l2" in result.output
    state = json.loads((out / "checkpoints" / "step-0000002" / "state.json").read_text())
    assert {"loss", "val_loss", "token_l2", "token_cos", "prev_shot_l2"} <= set(state)
    model = KeyframeAR.from_pretrained(export).eval()
    assert model.config.character_text and model.config.head == "gmm" and model.config.head_config["num_components"] == 2
    from mdream.training.ar_data import load_encoded_episodes

    index = json.loads((out / "data" / "val" / "index.json").read_text())
    val = load_encoded_episodes(out / "data" / "val", index["key"])
    shots = [ShotCondition(val.identifiers[i], val.descriptor_embeds[i], torch.zeros(3, 512),
                           torch.tensor([False, False, False])) for i in range(3)]
    movie = model.generate_movie(shots, generator=torch.Generator().manual_seed(0))
    assert movie.tokens.shape == (3, 2, 128) and torch.isfinite(movie.tokens).all()
    assert json.loads((export / "training_summary.json").read_text())["steps"] == 2
    # resume to more steps: the saved settings hold, the data cache is reused
    result = invoke("ar", "--out", str(out), "--steps", "3")
    assert "resumed from" in result.output and "encoding" not in result.output
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-0000003"
    assert KeyframeAR.from_pretrained(out / "final").config.num_tokens == 2


def test_bad_values_exit_2(tmp_path):
    bad = runner.invoke(app, ["ar", "--out", str(tmp_path / "a"), *TINY, "--head", "nope"])
    assert bad.exit_code == 2 and "--head must be one of" in bad.output
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("trainer: ar\ntoken_mask_prob: 1.5\n")
    bad = runner.invoke(app, ["ar", "--out", str(tmp_path / "b"), "--config", str(recipe)])
    assert bad.exit_code == 2 and "token_mask_prob" in bad.output
    recipe.write_text("trainer: ar\nwindow: many\n")
    bad = runner.invoke(app, ["ar", "--out", str(tmp_path / "c"), "--config", str(recipe)])
    assert bad.exit_code == 2 and "window" in bad.output
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    bad = runner.invoke(app, ["ar", "--out", str(tmp_path / "d"), *TINY, "--export", str(tmp_path / "busy")])
    assert bad.exit_code == 2 and "other files" in bad.output


def test_packaged_recipe_loads():
    path, values = load_recipe(ARTrainingConfig, "ar-toy-cpu", "ar")
    assert path == RECIPES_DIR / "ar-toy-cpu.yaml"
    assert values["hidden_size"] == 256 and values["head"] == "gmm"
    assert set(yaml.safe_load(path.read_text())) - {"trainer"} == set(values)
