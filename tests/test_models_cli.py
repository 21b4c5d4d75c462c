"""`mdream models list|show`, bundle.yaml's per-component settings, the full bundle template, and the
check that a run's components are present before any work."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml
from conftest import small_script_dict, write_script
from typer.testing import CliRunner

from mdream.cli.main import app
from mdream.errors import InputError, NotBuiltError
from mdream.models.bundle import BUNDLES_DIR, ModelBundle

runner = CliRunner()
TOY = BUNDLES_DIR / "toy"
SHA = "a" * 40


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network, and an empty Hugging Face cache of our own."""

    def no_network(*args, **kwargs):
        raise AssertionError("no network call may happen")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path / "hf" / "hub"


def _fake_snapshot(hub: Path, repo: str, files: dict[str, bytes]) -> None:
    """What huggingface_hub leaves after a download: refs/main, blobs, a snapshot of links."""
    folder = hub / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(SHA)
    snapshot = folder / "snapshots" / SHA
    snapshot.mkdir(parents=True)
    (folder / "blobs").mkdir()
    for i, (name, data) in enumerate(files.items()):
        blob = folder / "blobs" / f"blob{i}"
        blob.write_bytes(data)
        (snapshot / name).symlink_to(blob)


def _toy_components() -> dict:
    toy = yaml.safe_load((TOY / "bundle.yaml").read_text())
    return {name: {"path": str((TOY / spec["path"]).resolve())} for name, spec in toy["components"].items()}


def test_models_show_full_works_offline_and_marks_everything_absent(offline):
    result = runner.invoke(app, ["models", "show", "full", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    parts = {c["name"]: c for c in info["components"]}
    assert set(parts) == {"face_embedder", "text_encoder", "keyframe_encoder", "keyframe_decoder", "keyframe_ar", "video"}
    assert not any(c["present"] for c in parts.values())
    assert parts["video"]["location"] == "stabilityai/stable-video-diffusion-img2vid-xt@main"
    assert parts["keyframe_decoder"]["backbone"]["location"] == "stabilityai/stable-diffusion-xl-base-1.0@main"
    assert parts["keyframe_encoder"]["backbone"]["location"] == "laion/CLIP-ViT-H-14-laion2B-s32B-b79K@main"
    assert parts["keyframe_ar"]["backbone"]["location"] == "meta-llama/Llama-2-7b-hf@main"
    assert parts["face_embedder"]["location"].endswith("antelopev2/glintr100.onnx")
    assert parts["keyframe_decoder"]["sampling"] == {"steps": 30, "guidance": 5.0, "sampler": "dpmpp"}
    assert parts["keyframe_ar"]["dtype"] == "bfloat16"
    assert all(parts[n]["train"] for n in ("keyframe_encoder", "keyframe_decoder", "keyframe_ar"))
    table = runner.invoke(app, ["models", "show", "full"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "absent" in table.output and "huggingface-cli download" in table.output


def test_a_downloaded_hub_component_is_present_with_its_size(offline, tmp_path):
    _fake_snapshot(offline, "org/video-model", {"config.json": b"{}", "model.safetensors": b"x" * 5000})
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "bundle.yaml").write_text(
        "name: mine\ncomponents:\n  video: {hub: org/video-model, dtype: float16, steps: 12}\n"
        "  keyframe_ar: {path: nowhere, backbone: {hub: org/absent-llm}}\n")
    info = json.loads(runner.invoke(app, ["models", "show", str(tmp_path / "b"), "--json"]).output)
    parts = {c["name"]: c for c in info["components"]}
    assert parts["video"]["present"] and parts["video"]["size_bytes"] == 5002
    assert parts["video"]["dtype"] == "float16" and parts["video"]["sampling"] == {"steps": 12}
    assert not parts["keyframe_ar"]["present"] and not parts["keyframe_ar"]["backbone"]["present"]


def test_models_list_shows_built_in_and_given_bundles(offline, tmp_path):
    mine = tmp_path / "studio.yaml"  # a bundle YAML file by path (any name)
    mine.write_text(yaml.safe_dump({"components": _toy_components()}))
    result = runner.invoke(app, ["models", "list", str(mine), "--json"])
    assert result.exit_code == 0, result.output
    rows = {b["name"]: b for b in json.loads(result.output)}
    assert {"toy", "full", "studio"} <= set(rows)
    assert rows["toy"]["builtin"] and not rows["studio"]["builtin"]
    shipped = 6 if (TOY / "../../models/toy-video/video.json").is_file() else 5  # the video model once it ships
    assert rows["studio"]["present"] == rows["toy"]["present"] == shipped
    assert rows["full"]["present"] == 0 and rows["toy"]["size_bytes"] > 1_000_000
    table = runner.invoke(app, ["models", "list"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "toy" in table.output and "full" in table.output
    missing = runner.invoke(app, ["models", "show", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "Traceback" not in missing.output


@pytest.mark.parametrize("spec, message", [
    ("{path: x, dtype: float8}", "dtype"),
    ("{path: x, steps: 0}", "steps"),
    ("{path: x, sampler: magic}", "sampler"),
    ("{path: x, guidance: high}", "guidance"),
    ("{path: x, colour: red}", "unknown key"),
    ("{path: x, backbone: sdxl}", "backbone"),
    ("{path: x, decode: graphs}", "applies only to keyframe_ar"),
])
def test_bad_component_settings_are_input_errors(tmp_path, spec, message):
    (tmp_path / "bundle.yaml").write_text(f"components:\n  keyframe_decoder: {spec}\n")
    with pytest.raises(InputError, match=message):
        ModelBundle.find(str(tmp_path))


def test_the_kv_cache_setting_is_checked(tmp_path):
    (tmp_path / "bundle.yaml").write_text("components:\n  keyframe_ar: {path: x, decode: fast}\n")
    with pytest.raises(InputError, match="decode 'fast' is not one of dynamic, static, graphs"):
        ModelBundle.find(str(tmp_path))
    (tmp_path / "bundle.yaml").write_text("components:\n  keyframe_ar: {path: x, decode: graphs}\n")
    (tmp_path / "x").mkdir()
    assert ModelBundle.find(str(tmp_path)).component("keyframe_ar").settings() == {"decode": "graphs"}


def test_sampling_settings_only_for_sampling_components(tmp_path):
    (tmp_path / "bundle.yaml").write_text("components:\n  text_encoder: {path: x, steps: 4}\n")
    with pytest.raises(InputError, match="does not sample"):
        ModelBundle.find(str(tmp_path))


def test_bundle_settings_override_the_decoder_s_own_and_enter_its_identity(tmp_path):
    components = _toy_components()
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "bundle.yaml").write_text(yaml.safe_dump({"components": components}))
    components["keyframe_decoder"].update(steps=7, sampler="euler")
    (tmp_path / "tuned").mkdir()
    (tmp_path / "tuned" / "bundle.yaml").write_text(yaml.safe_dump({"components": components}))
    plain, tuned = (ModelBundle.find(str(tmp_path / n)) for n in ("plain", "tuned"))
    recorded = json.loads((Path(components["keyframe_decoder"]["path"]) / "keyframe_decoder.json").read_text())
    assert plain.sampling("keyframe_decoder")["steps"] == recorded["sampling"]["num_inference_steps"]
    assert tuned.sampling("keyframe_decoder") == {**plain.sampling("keyframe_decoder"), "steps": 7, "sampler": "euler"}
    toy = ModelBundle.find("toy")
    assert plain.identity(["keyframe_decoder"]) == toy.identity(["keyframe_decoder"])  # no settings: same keys
    assert tuned.identity(["keyframe_decoder"]) != plain.identity(["keyframe_decoder"])

    from mdream.stages.definitions import sampling_defaults

    ref = tuned.component("keyframe_decoder")
    assert sampling_defaults(ref.location, ref)[0] == 7


def test_an_uncached_hub_component_is_not_built_never_downloaded(offline, tmp_path):
    (tmp_path / "bundle.yaml").write_text("components:\n  text_encoder: {hub: org/clip, class: TextEncoder}\n")
    bundle = ModelBundle.find(str(tmp_path))
    with pytest.raises(NotBuiltError, match="not in the local Hugging Face cache"):
        bundle.load("text_encoder")


def test_validate_and_generate_with_the_full_bundle_name_what_is_missing(offline, tmp_path):
    data = small_script_dict()
    data["output"]["model_bundle"] = "full"
    script = write_script(tmp_path / "movie", data)
    result = runner.invoke(app, ["script-validate", str(script)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    for name in ("face_embedder", "text_encoder", "keyframe_encoder", "keyframe_decoder",
                 "stabilityai/stable-diffusion-xl-base-1.0"):
        assert name in result.output
    result = runner.invoke(app, ["generate", str(script), "-o", str(tmp_path / "m.mp4"), "--json"])
    assert result.exit_code == 1
    error = json.loads(result.output)
    assert error["error"] == "NotBuiltError" and "never downloads" in error["message"]
    assert not (tmp_path / "movie" / ".mdream").exists()  # failed before any work


def test_the_video_models_sampling_is_read_from_its_video_json():
    toy = ModelBundle.find("toy")
    recorded = json.loads((toy.components["video"].path / "video.json").read_text())
    sampling = toy.sampling("video")
    assert sampling["steps"] == recorded["num_inference_steps"] == 3  # the recipe's (test_shipped_weights)
    assert sampling["guidance"] == recorded["max_guidance_scale"] and sampling["sampler"] == "euler"
