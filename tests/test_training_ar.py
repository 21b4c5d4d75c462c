"""`mdream train ar`: encoded episodes (cache keys, held-out split), training windows, the CLI run, export, resume."""

from __future__ import annotations

import dataclasses
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
    frames, chars, identifiers, descriptors, scenes = render_episodes(0, 0, 0, 3, 5, 32, progress=False)
    assert identifiers == train.identifiers and np.array_equal(chars, train.chars.numpy())
    assert np.array_equal(scenes, train.scenes.numpy()) and (scenes >= 0).all()  # saved and read back
    tokens = KeyframeEncoder.from_pretrained(TOY_KEYFRAME_ENCODER).encode(frames[:4])
    assert torch.allclose(tokens, train.tokens[:4], atol=1e-5)
    text = TextEncoder.from_pretrained(TOY_TEXT_ENCODER).encode([descriptors[3], identifiers[3]])
    assert torch.allclose(text[0], train.descriptor_embeds[3], atol=1e-5)
    assert torch.allclose(text[1], train.identifier_embeds[3], atol=1e-5)
    # held out: other episodes, other face photos of the same characters
    _, _, val_ids, _, _ = render_episodes(0, 0, 3, 1, 5, 32, progress=False)
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


# ---- few-shot references, horizontal flip, no face embeddings ----------------------------------
def test_swap_left_right_swaps_whole_words_and_keeps_capitals():
    from mdream.training.ar_data import swap_left_right

    assert swap_left_right("On the left, Ana waves. Right of her, Bo; LEFT.") == \
        "On the right, Ana waves. Left of her, Bo; RIGHT."
    assert swap_left_right("leftover brightness") == "leftover brightness"  # only whole words


@pytest.fixture(scope="module")
def flipped(tmp_path_factory):
    import dataclasses

    out = tmp_path_factory.mktemp("ar-data-flip")
    return load_data(dataclasses.replace(TINY_CONFIG, flip_prob=0.5), out, progress=False)[0]


def test_flipped_episodes_flip_pixels_words_and_positions(encoded, flipped):
    from mdream.models.encoders import KeyframeEncoder, TextEncoder
    from mdream.training.ar_data import swap_left_right

    _, train, _ = encoded
    assert not train.has_flips and flipped.has_flips
    assert torch.equal(flipped.tokens, train.tokens) and flipped.key != train.key  # the same set, plus its flips
    frames, chars, identifiers, descriptors, _ = render_episodes(0, 0, 0, 3, 5, 32, progress=False)
    encoder = KeyframeEncoder.from_pretrained(TOY_KEYFRAME_ENCODER)
    mirrored = encoder.encode(np.ascontiguousarray(frames[:4, :, ::-1]))
    assert torch.allclose(flipped.flipped_tokens[:4], mirrored, atol=1e-5)
    assert not torch.allclose(flipped.flipped_tokens[:4], flipped.tokens[:4], atol=1e-3)
    assert torch.equal(flipped.flipped_chars, torch.from_numpy(chars[:, ::-1].copy()))
    row = next(i for i, d in enumerate(descriptors) if " left" in d or " right" in d)
    assert flipped.flipped_identifiers[row] == swap_left_right(identifiers[row])
    text = TextEncoder.from_pretrained(TOY_TEXT_ENCODER).encode([swap_left_right(descriptors[row])])[0]
    assert torch.allclose(flipped.flipped_descriptor_embeds[row], text, atol=1e-5)
    assert not torch.allclose(flipped.flipped_descriptor_embeds[row], flipped.descriptor_embeds[row], atol=1e-4)

    # a flipped window: every shot of it mirrored, its cast slots swapped (faces follow their characters)
    w = sample_window(flipped, np.random.default_rng(0), 4, flip_prob=1.0, reference_prob=1.0, max_references=2)
    assert w.flipped
    assert torch.equal(w.sample.tokens, flipped.flipped_tokens[torch.from_numpy(w.rows)])
    assert torch.equal(w.sample.references, flipped.flipped_tokens[torch.from_numpy(w.reference_rows)])
    for s, r in zip(w.sample.shots, w.rows, strict=True):
        assert s.identifier == flipped.flipped_identifiers[r]
        assert torch.equal(s.descriptor_embed, flipped.flipped_descriptor_embeds[r])
        assert s.face_mask.tolist() == (flipped.chars[r].flip(0) >= 0).tolist()
    plain = sample_window(flipped, np.random.default_rng(0), 4)
    assert not plain.flipped and torch.equal(plain.sample.tokens, flipped.tokens[torch.from_numpy(plain.rows)])
    with pytest.raises(ValueError, match="flips"):
        sample_window(train, np.random.default_rng(0), 4, flip_prob=1.0)


def test_reference_frames_are_other_frames_of_the_same_episode(encoded):
    _, train, _ = encoded
    counts = set()
    for seed in range(30):
        w = sample_window(train, np.random.default_rng(seed), 3, reference_prob=1.0, max_references=2)
        refs = w.reference_rows
        assert refs is not None and 1 <= len(refs) <= 2
        counts.add(len(refs))
        episode = {int(torch.searchsorted(train.episode_starts, torch.tensor(int(r)), right=True)) - 1
                   for r in [*w.rows, *refs]}
        assert len(episode) == 1  # the window's own episode
        assert not set(refs.tolist()) & set(w.rows.tolist())  # never a frame the window predicts
        assert torch.equal(w.sample.references, train.tokens[torch.from_numpy(refs)])
    assert counts == {1, 2}
    assert sample_window(train, np.random.default_rng(0), 3).sample.references is None  # off by default
    # a window covering its whole episode has no frame left to show
    assert sample_window(train, np.random.default_rng(0), 5, reference_prob=1.0, max_references=2).reference_rows is None


def test_scene_reference_windows_start_the_episode_and_show_the_windows_scenes(encoded):
    _, train, _ = encoded
    # episode e's shots play scenes [0, 0, 0, 2, 0]: a 3-shot window from its start shows scene 0, and of the two
    # frames outside it only the last one shows scene 0
    data = dataclasses.replace(train, scenes=torch.tensor([0, 0, 0, 2, 0] * 3))
    for seed in range(20):
        w = sample_window(data, np.random.default_rng(seed), 3, max_references=2, reference_scene_prob=1.0)
        first = int(w.rows[0])
        assert first % 5 == 0 and w.rows.tolist() == [first, first + 1, first + 2]
        assert w.reference_rows.tolist() == [first + 4]
    # when no frame outside the window shows its scenes, any frame outside it does
    other = dataclasses.replace(train, scenes=torch.tensor([0, 0, 0, 2, 3] * 3))
    refs = {int(r) % 5 for s in range(20) for r in sample_window(other, np.random.default_rng(s), 3, max_references=2,
                                                                  reference_scene_prob=1.0).reference_rows}
    assert refs == {3, 4}
    # unknown scenes (-1) never count as the window's
    unknown = dataclasses.replace(train, scenes=None)
    assert (unknown.scenes == -1).all()
    refs = {int(r) % 5 for s in range(20) for r in sample_window(unknown, np.random.default_rng(s), 3, max_references=2,
                                                                    reference_scene_prob=1.0).reference_rows}
    assert refs == {3, 4}


def test_scene_reference_windows_may_start_anywhere_with_references_from_before_and_after(encoded):
    _, train, _ = encoded
    data = dataclasses.replace(train, scenes=torch.tensor([0, 1, 1, 2, 0] * 3))
    starts, before = set(), 0
    for seed in range(40):
        w = sample_window(data, np.random.default_rng(seed), 2, max_references=1, reference_scene_prob=1.0,
                          reference_scene_start="anywhere")
        first = int(w.rows[0])
        starts.add(first % 5)
        shown = {int(data.scenes[r]) for r in w.rows}
        (ref,) = w.reference_rows.tolist()
        assert ref not in w.rows.tolist() and ref // 5 == first // 5  # outside the window, in its episode
        if any(int(data.scenes[r]) in shown for r in range(first - first % 5, first - first % 5 + 5)
               if r not in w.rows.tolist()):
            assert int(data.scenes[ref]) in shown  # a frame of a scene the window shows, where there is one
        before += ref < first
    assert len(starts) > 1 and before > 0


def test_init_starts_from_a_trained_model_and_refuses_other_sizes(tmp_path):
    first = tmp_path / "first"
    invoke("ar", "--out", str(first), *TINY, "--steps", "1")
    trained = KeyframeAR.from_pretrained(first / "final")
    second = tmp_path / "second"
    result = invoke("ar", "--out", str(second), *TINY, "--steps", "1", "--lr", "0", "--warmup", "0",
                    "--init", str(first / "final"))
    assert "initialised from" in result.output
    tuned = KeyframeAR.from_pretrained(second / "final")
    for (name, a), b in zip(trained.state_dict().items(), tuned.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-3), name  # learning rate 0: the weights it started from
    wider = runner.invoke(app, ["ar", "--out", str(tmp_path / "third"), *TINY, "--hidden-size", "64", "--steps", "1",
                                "--init", str(first / "final")])
    assert wider.exit_code == 2 and "does not match this run's sizes" in wider.output
    missing = runner.invoke(app, ["ar", "--out", str(tmp_path / "fourth"), *TINY, "--init", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "no keyframe AR model there" in missing.output


def test_the_switches_reach_the_model_and_the_sequence(encoded):
    import dataclasses

    _, train, _ = encoded
    config = dataclasses.replace(TINY_CONFIG, faces=False, reference_prob=0.5, max_references=3)
    torch.manual_seed(0)
    model = build_model(config, train, TOY_TEXT_ENCODER)
    assert model.config.faces is False and model.projectors.face is None and model.config.max_references == 3
    w = sample_window(train, np.random.default_rng(1), 4, reference_prob=1.0, max_references=3)
    embeds, _ = model.sequence(w.sample)
    faceless = dataclasses.replace(w.sample, shots=[dataclasses.replace(s, face_embeds=torch.randn_like(s.face_embeds))
                                                    for s in w.sample.shots])
    assert torch.equal(model.sequence(faceless)[0], embeds)  # no face embedding in it
    assert model.sequence(w.sample)[0].shape[0] <= model.config.context_window  # room for the references too
    # without references the model records none: it was trained zero-shot
    assert build_model(TINY_CONFIG, train, TOY_TEXT_ENCODER).config.max_references == 0


def test_cli_records_the_few_shot_and_ablation_switches(tmp_path):
    out, export = tmp_path / "run", tmp_path / "export"
    invoke("ar", "--out", str(out), *TINY, "--steps", "1", "--reference-prob", "0.5", "--max-references", "2",
           "--flip-prob", "0.5", "--no-faces", "--export", str(export))
    saved = json.loads((out / "train_config.json").read_text())
    assert (saved["reference_prob"], saved["max_references"], saved["flip_prob"], saved["faces"]) == (0.5, 2, 0.5, False)
    assert (saved["reverse_prob"], saved["face_randomisation"], saved["token_mask_prob"]) == (0.0, True, 0.15)
    state = json.loads((out / "checkpoints" / "step-0000001" / "state.json").read_text())
    assert {"val_loss", "ref_val_loss", "ref_token_l2"} <= set(state)  # zero- and few-shot held-out numbers
    model = KeyframeAR.from_pretrained(export)
    assert model.config.max_references == 2 and model.config.faces is False
    assert json.loads((out / "data" / "train" / "index.json").read_text())["info"]["flip"] is True
    bad = runner.invoke(app, ["ar", "--out", str(tmp_path / "b"), *TINY, "--reference-prob", "0.5",
                              "--max-references", "0"])
    assert bad.exit_code == 2 and "--max-references" in bad.output
