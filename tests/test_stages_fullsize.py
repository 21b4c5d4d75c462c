"""encode -> keyframes -> render through the CLI, with a bundle of tiny random full-size-shaped models.

The bundle is built from configs (CLIP-shaped text/vision towers, an SDXL-shaped UNet + VAE, an
insightface-loadable recognition ONNX), saved to a folder and named by the script's
`output.model_bundle`: the stages load it through the same from_pretrained code as real weights.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import small_script_dict, write_face, write_script
from PIL import Image
from test_models_fullsize import TEXTS, sdxl_decoder
from typer.testing import CliRunner

from mdream.cli.main import app
from mdream.eval.face_embedder import FaceEmbedderConfig, FaceEmbedderNet, export_onnx
from mdream.models.encoders import KeyframeEncoder
from mdream.models.toy_clip import build_toy_clip, build_word_tokenizer, save_clip_folder

runner = CliRunner()


def _build_bundle(root, character_text_dim: int | None = None):
    """A bundle of tiny random models in ``root``; ``character_text_dim``: a renderer that also takes each
    cast member's description embedding in their face slot (``--character-text``)."""
    torch.manual_seed(0)
    export_onnx(FaceEmbedderNet(FaceEmbedderConfig(widths=(8, 8, 16, 16), head_channels=8)).eval(), root / "face.onnx")
    character_texts = [c["description"] for c in small_script_dict()["characters"]] + [DESCRIBED_ADA]
    tokenizer = build_word_tokenizer(TEXTS + ["Detailed description of shot"] + character_texts, max_length=32)
    clip = build_toy_clip(tokenizer, image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=2, projection_dim=24)
    save_clip_folder(clip, tokenizer, root / "clip")
    encoder = KeyframeEncoder.from_vision_model(str(root / "clip"), num_tokens=2, token_dim=16, width=32, num_heads=2)
    encoder.save_pretrained(root / "encoder", vision_reference="../clip")
    sdxl_decoder(token_dim=16, text_dim=24, character_text_dim=character_text_dim).save_pretrained(root / "decoder")
    # Few sampling steps: this tests the stages' plumbing, not image quality.
    config = json.loads((root / "decoder" / "keyframe_decoder.json").read_text())
    config["sampling"] = {"num_inference_steps": 3, "guidance_scale": 2.0}
    (root / "decoder" / "keyframe_decoder.json").write_text(json.dumps(config))
    (root / "bundle.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "components": {
                    "face_embedder": {"path": "face.onnx"},
                    "text_encoder": {"path": "clip"},
                    "keyframe_encoder": {"path": "encoder"},
                    "keyframe_decoder": {"path": "decoder"},
                },
            }
        )
    )
    return root


DESCRIBED_ADA = "a short woman with long red hair"


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    return _build_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def described_bundle(tmp_path_factory):
    return _build_bundle(tmp_path_factory.mktemp("described"), character_text_dim=24)


def _storyboard(folder, bundle):
    data = small_script_dict()
    data["output"]["model_bundle"] = str(bundle)
    for i, shot in enumerate(data["arcs"][0]["shots"]):
        write_face(folder / "frames" / f"{i}.png", (40 * i, 100, 200 - 30 * i))
        shot["keyframe"] = f"frames/{i}.png"
    return write_script(folder, data)


@pytest.fixture
def storyboard(tmp_path, tiny_bundle):
    """A 6-shot script whose every shot has a given keyframe, drawing with the tiny bundle."""
    return _storyboard(tmp_path / "movie", tiny_bundle)


def _invoke(*args):
    result = runner.invoke(app, [*map(str, args), "--device", "cpu", "--quiet"])
    return result


def test_encode_keyframes_render_round_trip(storyboard, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out"
    for verb in ("encode", "keyframes"):
        result = _invoke(verb, storyboard, "--cache-dir", cache)
        assert result.exit_code == 0, result.output
    result = _invoke("render", storyboard, "--cache-dir", cache, "--out", out)
    assert result.exit_code == 0, result.output
    frames = sorted((out / "keyframes").glob("*.png"))
    assert [f.name for f in frames] == [f"{i:04d}.png" for i in range(6)]
    assert Image.open(frames[0]).size == (64, 64)
    assert json.loads((out / "shots.json").read_text())["shots"][5]["id"] == "act1-006"

    status = runner.invoke(app, ["status", str(storyboard), "--cache-dir", str(cache), "--json"])
    totals = json.loads(status.output)["totals"]
    assert totals["encode"] == totals["keyframes"] == totals["render"] == {"done": 6}
    assert totals["video"] == {"missing": 6}

    # The same seed gives identical pixels when recomputed; another seed gives other pixels.
    before = [np.asarray(Image.open(f)) for f in frames]
    assert _invoke("render", storyboard, "--cache-dir", cache, "--out", out, "--force").exit_code == 0
    assert all(np.array_equal(a, np.asarray(Image.open(f))) for a, f in zip(before, frames, strict=True))
    other = tmp_path / "other"
    for verb in ("encode", "keyframes"):
        assert _invoke(verb, storyboard, "--cache-dir", cache, "--seed", 5).exit_code == 0
    assert _invoke("render", storyboard, "--cache-dir", cache, "--out", other, "--seed", 5).exit_code == 0
    assert not np.array_equal(before[0], np.asarray(Image.open(other / "keyframes" / "0000.png")))


@pytest.mark.parametrize("described", [False, True], ids=["plain", "character-text"])
def test_a_character_description_reaches_the_renderer_trained_with_it(described, tiny_bundle, described_bundle, tmp_path):
    """Editing Ada's description re-encodes and re-renders her shots (0, 2, 4) only. A renderer built with
    character_text_dim draws them differently (her description is in her face slot); one without it ignores
    descriptions, so its pixels stay identical."""
    storyboard = _storyboard(tmp_path / "movie", described_bundle if described else tiny_bundle)
    cache, out = tmp_path / "cache", tmp_path / "out"
    for verb in ("encode", "keyframes", "render"):
        result = _invoke(verb, storyboard, "--cache-dir", cache, *(["--out", out] if verb == "render" else []))
        assert result.exit_code == 0, result.output
    before = [np.asarray(Image.open(out / "keyframes" / f"{i:04d}.png")) for i in range(6)]

    data = yaml.safe_load(storyboard.read_text())
    assert data["characters"][0]["id"] == "ada"
    data["characters"][0]["description"] = DESCRIBED_ADA
    storyboard.write_text(yaml.safe_dump(data))
    status = runner.invoke(app, ["status", str(storyboard), "--cache-dir", str(cache), "--json"])
    assert json.loads(status.output)["totals"]["encode"] == {"done": 3, "stale": 3}
    for verb in ("encode", "keyframes", "render"):
        result = _invoke(verb, storyboard, "--cache-dir", cache, *(["--out", out] if verb == "render" else []))
        assert result.exit_code == 0, result.output
    after = [np.asarray(Image.open(out / "keyframes" / f"{i:04d}.png")) for i in range(6)]
    changed = [i for i in range(6) if not np.array_equal(before[i], after[i])]
    assert changed == ([0, 2, 4] if described else [])


def test_script_sampling_settings_change_the_render_and_its_keys(storyboard, tmp_path):
    """`output.sampling` overrides the bundle's steps / guidance / sampler: the renders are recomputed (their
    keys hold the overrides) while encode and keyframes stay cached; a bad sampler is a script error."""
    cache, out = tmp_path / "cache", tmp_path / "out"
    for verb in ("encode", "keyframes", "render"):
        assert _invoke(verb, storyboard, "--cache-dir", cache, *(["--out", out] if verb == "render" else [])).exit_code == 0
    before = np.asarray(Image.open(out / "keyframes" / "0000.png"))
    data = yaml.safe_load(storyboard.read_text())
    data["output"]["sampling"] = {"steps": 2, "guidance_scale": 1.0, "sampler": "dpmpp"}
    storyboard.write_text(yaml.safe_dump(data))

    def totals():
        status = runner.invoke(app, ["status", str(storyboard), "--cache-dir", str(cache), "--json"])
        return json.loads(status.output)["totals"]

    assert totals()["render"] == {"stale": 6}
    assert totals()["keyframes"] == {"done": 6}
    assert _invoke("render", storyboard, "--cache-dir", cache, "--out", out).exit_code == 0
    assert totals()["render"] == {"done": 6}
    assert not np.array_equal(before, np.asarray(Image.open(out / "keyframes" / "0000.png")))

    data["output"]["sampling"] = {"sampler": "plms"}
    storyboard.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["script-validate", str(storyboard)])
    assert result.exit_code != 0 and "sampler" in result.output


def test_script_samplers_are_the_renderers_schedulers():
    from mdream.models.decoder import SCHEDULERS
    from mdream.script.models import SAMPLERS

    assert set(SAMPLERS) == set(SCHEDULERS)


def test_render_needs_its_upstream_and_says_so(storyboard, tmp_path):
    result = _invoke("render", storyboard, "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 1
    assert f"run `mdream keyframes {storyboard.resolve()}` first" in result.output.replace("\n", "")


def test_predicting_keyframes_needs_an_ar_model_in_the_bundle(storyboard, tmp_path):
    data = yaml.safe_load(storyboard.read_text())
    del data["arcs"][0]["shots"][3]["keyframe"]
    storyboard.write_text(yaml.safe_dump(data))
    assert _invoke("encode", storyboard, "--cache-dir", tmp_path / "c").exit_code == 0
    result = _invoke("keyframes", storyboard, "--cache-dir", tmp_path / "c")
    assert result.exit_code == 1 and "no keyframe AR model" in result.output and "act1-004" in result.output


def _write_two_shot_video(path, size: int = 64, frames_per_shot: int = 20) -> None:
    import imageio.v2 as imageio

    rng = np.random.default_rng(0)
    frames = []
    for colour in ((230, 40, 40), (30, 60, 220)):
        base = np.full((size, size, 3), colour, np.uint8)
        for _ in range(frames_per_shot):
            frames.append(np.clip(base + rng.integers(-5, 6, base.shape), 0, 255).astype(np.uint8))
    imageio.mimwrite(path, frames, fps=8, codec="libx264", macro_block_size=1)


def test_encode_media_then_render_tokens(tiny_bundle, tmp_path):
    stills = tmp_path / "stills"
    for i in range(3):
        write_face(stills / f"{i}.png", (60 * i, 90, 120))
    video = tmp_path / "two_shots.mp4"
    _write_two_shot_video(video)
    tokens_file = tmp_path / "tokens.safetensors"
    args = ["encode", stills, video, "-o", tokens_file, "--bundle", tiny_bundle, "--cache-dir", tmp_path / "c", "--json"]
    result = runner.invoke(app, [*map(str, args), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["items"] == 5 and report["encoded"] == 5 and report["token_shape"] == [5, 2, 16]
    items = json.loads(tokens_file.with_suffix(".json").read_text())["items"]
    assert [i["shot"] for i in items] == [None, None, None, 0, 1]  # the cut between the colours is found
    again = json.loads(runner.invoke(app, [*map(str, args), "--device", "cpu"]).output)
    assert again["encoded"] == 0 and again["reused"] == 5

    out = tmp_path / "rendered"
    result = runner.invoke(app, ["render", str(tokens_file), "--bundle", str(tiny_bundle), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:04d}.png" for i in range(5)]
    # other sampling settings for a tokens file: other pixels from the same seed; a bad sampler exits 2
    first = np.asarray(Image.open(out / "0000.png"))
    other = tmp_path / "other"
    result = runner.invoke(app, ["render", str(tokens_file), "--bundle", str(tiny_bundle), "--out", str(other),
                                 "--device", "cpu", "--steps", "2", "--guidance-scale", "1", "--sampler", "dpmpp"])
    assert result.exit_code == 0, result.output
    assert not np.array_equal(first, np.asarray(Image.open(other / "0000.png")))
    bad = runner.invoke(app, ["render", str(tokens_file), "--bundle", str(tiny_bundle), "--sampler", "plms"])
    assert bad.exit_code == 2 and "Unknown scheduler" in bad.output


def test_sampling_flags_are_refused_for_a_script(storyboard, tmp_path):
    result = _invoke("render", storyboard, "--cache-dir", tmp_path / "c", "--steps", 3)
    assert result.exit_code == 2 and "output.sampling" in result.output and "Traceback" not in result.output


def test_encode_media_bad_inputs_exit_2(tiny_bundle, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    for bad in (tmp_path / "missing.png", tmp_path / "notes.txt"):
        result = runner.invoke(app, ["encode", str(bad), "--bundle", str(tiny_bundle), "-o", str(tmp_path / "t.safetensors")])
        assert result.exit_code == 2 and "Traceback" not in result.output
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    result = runner.invoke(app, ["encode", str(broken), "--bundle", str(tiny_bundle), "-o", str(tmp_path / "t.safetensors")])
    assert result.exit_code == 2, result.output


def test_generate_until_render_writes_the_movie_folder(storyboard, tmp_path):
    movie = tmp_path / "out" / "movie.mp4"
    result = _invoke("generate", storyboard, "-o", movie, "--until", "render", "--cache-dir", tmp_path / "c")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out" / "movie" / "keyframes").glob("*.png"))) == 6
    assert not movie.exists()
    # The whole pipeline: the toy bundle has no video model, so the movie is the animatic.
    result = _invoke("generate", storyboard, "-o", movie, "--cache-dir", tmp_path / "c")
    assert result.exit_code == 0, result.output
    assert movie.is_file() and (tmp_path / "out" / "movie" / "storyboard.png").is_file()
    assert _invoke("generate", storyboard, "--until", "mux").exit_code == 2
