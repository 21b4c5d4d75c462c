"""Shipped models travel: no machine paths in the assets, the toy bundle loads from a copy, `mdream train
export` writes folders that load after a move, and the built wheel runs the main job from a fresh venv."""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_training_toy import TINY_CLIP, TINY_TOKENIZER
from typer.testing import CliRunner

import mdream
from mdream.errors import CorruptArtifactError
from mdream.models.bundle import ModelBundle, linked_folders
from mdream.models.decoder import KeyframeDecoder
from mdream.models.encoders import KeyframeEncoder, TextEncoder
from mdream.models.loading import resolve_reference
from mdream.training.cli import app

CHECKOUT = Path(__file__).resolve().parent.parent
ASSETS = Path(mdream.__file__).resolve().parent / "assets"
SAMPLING = {"num_inference_steps", "guidance_scale", "identity_guidance_scale", "scheduler"}
# Absolute paths name one machine's layout; a home-relative one (``~/.insightface/...``, where a tool unpacks its
# models for whoever runs it) does not.
MACHINE_PATH = re.compile(r"^(/.|[A-Za-z]:[\\/]|\\\\)")
MACHINE_ROOTS = ("/home", "/work", "/tmp", "/root", "/Users", "C:\\")

runner = CliRunner()


def config_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".json", ".yaml", ".yml"))


def strings(data, where: str = ""):
    """(where, string) for every key and string value of a parsed document."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield f"{where}.{key}", str(key)
            yield from strings(value, f"{where}.{key}")
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from strings(value, f"{where}[{i}]")
    elif isinstance(data, str):
        yield where, data


def machine_paths_in(folder: Path) -> list[str]:
    found = []
    for path in config_files(folder):
        text = path.read_text()
        found += [f"{path}: contains {root!r}" for root in MACHINE_ROOTS if root in text]
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        found += [f"{path}{where} = {value}" for where, value in strings(data) if MACHINE_PATH.match(value)]
        if "_name_or_path" in text:
            found.append(f"{path}: _name_or_path")
    return found


def inside(path: str | Path, folder: Path) -> bool:
    path, folder = Path(path).resolve(), folder.resolve()
    return path == folder or folder in path.parents


# ---- the shipped assets -----------------------------------------------------------------------------


def test_assets_name_no_machine_path():
    assert config_files(ASSETS), ASSETS
    assert machine_paths_in(ASSETS) == []


def test_shipped_decoders_carry_their_measured_sampling_settings():
    from mdream.stages.definitions import sampling_defaults

    decoders = sorted(ASSETS.rglob("keyframe_decoder.json"))
    assert decoders
    for path in decoders:
        cfg = json.loads(path.read_text())
        assert set(cfg.get("sampling", {})) == SAMPLING, path
        assert cfg["sampling"]["scheduler"] == cfg["scheduler"], path
    toy = ASSETS / "models" / "toy-tokenizer"
    measured = json.loads((toy / "eval.json").read_text())
    sampling = json.loads((toy / "decoder" / "keyframe_decoder.json").read_text())["sampling"]
    assert sampling == {"num_inference_steps": measured["steps"], "guidance_scale": measured["guidance_scale"],
                        "identity_guidance_scale": measured["identity_guidance_scale"], "scheduler": measured["scheduler"]}
    assert sampling_defaults(toy / "decoder") == (20, 1.0, 0.0)


def test_toy_bundle_loads_from_a_copy_of_the_assets(tmp_path):
    from mdream.models.face_embedder import FaceIdentityEmbedder

    copy = tmp_path / "assets"
    shutil.copytree(ASSETS, copy, ignore=shutil.ignore_patterns("__pycache__"))
    bundle = ModelBundle.load(str(copy / "bundles" / "toy"))
    present = {name: ref for name, ref in bundle.components.items() if ref.exists}
    assert {"face_embedder", "text_encoder", "keyframe_encoder", "keyframe_decoder"} <= set(present)
    for ref in present.values():
        assert ref.path is not None and inside(ref.path, copy), ref
    FaceIdentityEmbedder(bundle.component("face_embedder").location)
    text = TextEncoder.from_pretrained(bundle.component("text_encoder").location)
    assert text.encode(["the harbor at dusk"]).shape[0] == 1
    location = bundle.component("keyframe_encoder").location
    encoder = KeyframeEncoder.from_pretrained(location)
    clip = resolve_reference(location, encoder.vision_reference)
    assert not Path(encoder.vision_reference).is_absolute() and inside(clip, copy), encoder.vision_reference
    # the bundle's identity follows the CLIP the encoder reads, in the copy
    assert [inside(p, copy) for p in linked_folders(Path(location))] == [True]
    decoder = KeyframeDecoder.from_pretrained(bundle.component("keyframe_decoder").location)
    assert decoder.scheduler_name == decoder.sampling["scheduler"] == "ddim"
    tokens = encoder.encode(np.zeros((1, 32, 32, 3), dtype=np.uint8))
    image = decoder.generate(tokens, num_inference_steps=1, generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 32, 32, 3)


def test_decoder_with_two_different_samplers_is_refused(tmp_path):
    folder = tmp_path / "decoder"
    shutil.copytree(ASSETS / "models" / "toy-tokenizer" / "decoder", folder)
    cfg = json.loads((folder / "keyframe_decoder.json").read_text())
    cfg["sampling"]["scheduler"] = "euler"
    (folder / "keyframe_decoder.json").write_text(json.dumps(cfg))
    with pytest.raises(CorruptArtifactError, match="two samplers"):
        KeyframeDecoder.from_pretrained(folder)
    cfg["sampling"] = {"guidance": 2.0}
    (folder / "keyframe_decoder.json").write_text(json.dumps(cfg))
    with pytest.raises(CorruptArtifactError, match="unknown sampling settings guidance"):
        KeyframeDecoder.from_pretrained(folder)


# ---- `mdream train export` ----------------------------------------------------------------------------


def export(*args: str, code: int = 0):
    result = runner.invoke(app, ["export", *map(str, args)])
    assert result.exit_code == code, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny toy-CLIP run and a one-step tokenizer run on it."""
    root = tmp_path_factory.mktemp("runs")
    for args in (["clip", "--out", root / "clip", "--steps", "2", *TINY_CLIP, "--export", root / "clip-export"],
                 ["tokenizer", "--out", root / "tok", "--clip", root / "clip" / "final", *TINY_TOKENIZER, "--steps", "1"]):
        result = runner.invoke(app, list(map(str, args)))
        assert result.exit_code == 0, result.output + repr(result.exception)
    return root


def check_tokenizer_folder(folder: Path, frames: np.ndarray) -> None:
    """No machine path; the full sampling block; the CLIP read from inside ``folder``'s parent; it renders."""
    assert machine_paths_in(folder) == []
    decoder = KeyframeDecoder.from_pretrained(folder / "decoder")
    assert set(decoder.sampling) == SAMPLING
    encoder = KeyframeEncoder.from_pretrained(folder / "encoder")
    assert inside(resolve_reference(folder / "encoder", encoder.vision_reference), folder.parent)
    tokens = encoder.encode(frames)
    images = decoder.generate(tokens, num_inference_steps=1, generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (len(frames), 32, 32, 3)


def test_export_writes_a_folder_that_loads_after_a_move(runs, tmp_path):
    checkpoint = runs / "tok" / "checkpoints" / "step-0000001"
    # the checkpoint's own configs name the training machine; the export's do not
    assert Path(json.loads((checkpoint / "encoder" / "keyframe_encoder.json").read_text())["vision_model"]).is_absolute()
    dest = tmp_path / "models" / "tok"
    result = export(runs / "tok", dest, "--steps", "2", "--guidance-scale", "1.5", "--identity-guidance", "0.5")
    assert "copied the CLIP" in result.output
    sampling = json.loads((dest / "decoder" / "keyframe_decoder.json").read_text())["sampling"]
    assert sampling == {"num_inference_steps": 2, "guidance_scale": 1.5, "identity_guidance_scale": 0.5, "scheduler": "ddim"}
    assert json.loads((dest / "encoder" / "keyframe_encoder.json").read_text())["vision_model"] == "../clip"
    record = json.loads((dest / "train_config.json").read_text())
    assert record["clip"] == "clip" and record["steps"] == 1
    assert machine_paths_in(dest) == []
    assert not any(p.name.startswith(".") for p in dest.parent.iterdir())  # no staging folder left behind

    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.move(dest, moved)
    hidden = runs.parent / (runs.name + "-hidden")
    runs.rename(hidden)  # nothing may point back at the training runs
    try:
        frames = np.load(hidden / "tok" / "frames.npz")["frames"][:2]
        check_tokenizer_folder(moved, frames)
    finally:
        hidden.rename(runs)


def test_export_beside_a_clip_refers_to_it(runs, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(runs / "clip" / "final", models / "my-clip")
    eval_record = {"steps": 3, "guidance_scale": 1.0, "identity_guidance_scale": 0.0, "scheduler": "euler", "results": {}}
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(runs / "tok" / "checkpoints" / "step-0000001", checkpoint)
    (checkpoint / "eval.json").write_text(json.dumps(eval_record))
    export(checkpoint, models / "tok")
    # the sampling block is the one eval.json was measured with; the CLIP beside the export is named, not copied
    decoder_cfg = json.loads((models / "tok" / "decoder" / "keyframe_decoder.json").read_text())
    assert decoder_cfg["sampling"] == {"num_inference_steps": 3, "guidance_scale": 1.0,
                                       "identity_guidance_scale": 0.0, "scheduler": "euler"}
    assert decoder_cfg["scheduler"] == "euler"
    assert json.loads((models / "tok" / "encoder" / "keyframe_encoder.json").read_text())["vision_model"] == "../../my-clip"
    assert not (models / "tok" / "clip").exists()
    assert json.loads((models / "tok" / "train_config.json").read_text())["clip"] == "../my-clip"
    shutil.move(models, tmp_path / "moved")
    check_tokenizer_folder(tmp_path / "moved" / "tok", np.load(runs / "tok" / "frames.npz")["frames"][:1])

    # an explicit reference must name the same CLIP, relative to DEST/encoder
    export(checkpoint, tmp_path / "moved" / "tok2", "--clip-reference", "../../my-clip")
    bad = export(checkpoint, tmp_path / "moved" / "tok3", "--clip-reference", str(tmp_path / "moved" / "my-clip"), code=2)
    assert "absolute path" in bad.output
    assert "no CLIP folder" in export(checkpoint, tmp_path / "x", "--clip-reference", "../../nope", code=2).output
    other = tmp_path / "moved" / "other-clip"
    shutil.copytree(tmp_path / "moved" / "my-clip", other)
    weights = load_file(other / "model.safetensors")
    from safetensors.torch import save_file

    save_file({k: v * 2 for k, v in weights.items()}, other / "model.safetensors")
    assert "weights differ" in export(checkpoint, tmp_path / "moved" / "tok4", "--clip-reference", "../../other-clip",
                                      code=2).output


def test_export_needs_sampling_settings_and_refuses_machine_paths(runs, tmp_path):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(runs / "tok" / "checkpoints" / "step-0000001", checkpoint)
    result = export(checkpoint, tmp_path / "out", code=2)
    assert "--guidance-scale" in result.output and not (tmp_path / "out").exists()
    # _name_or_path is dropped; any other machine path in a loadable config stops the export, leaving DEST alone
    unet_config = checkpoint / "decoder" / "unet" / "config.json"
    cfg = json.loads(unet_config.read_text())
    cfg["_name_or_path"] = "/home/someone/run/unet"
    cfg["extra_weights"] = "/home/someone/run/extra"
    unet_config.write_text(json.dumps(cfg))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    result = export(checkpoint, tmp_path / "out", "--guidance-scale", "1", "--identity-guidance", "0", "--steps", "2", code=2)
    assert "Refusing to export" in result.output and "extra_weights" in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["keep.txt"]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    del cfg["extra_weights"]
    unet_config.write_text(json.dumps(cfg))
    export(checkpoint, tmp_path / "out", "--guidance-scale", "1", "--identity-guidance", "0", "--steps", "2")
    assert machine_paths_in(tmp_path / "out") == [] and (tmp_path / "out" / "keep.txt").is_file()


def test_export_of_the_clip(runs, tmp_path):
    dest = tmp_path / "models" / "clip"
    result = export(runs / "clip", dest)  # the run folder: its newest checkpoint
    assert "clip" in result.output
    assert machine_paths_in(dest) == []
    summary = json.loads((dest / "training_summary.json").read_text())
    assert summary["steps"] == 2 and 0 <= summary["retrieval_top1_of_256"] <= 1
    # the rebuilt CLIP holds the checkpoint's weights (the same as the run's final folder)
    exported, final = load_file(dest / "model.safetensors"), load_file(runs / "clip" / "final" / "model.safetensors")
    assert exported.keys() == final.keys() and all(torch.equal(exported[k], final[k]) for k in final)
    shutil.move(dest, tmp_path / "moved-clip")
    assert TextEncoder.from_pretrained(tmp_path / "moved-clip").encode(["Wide shot of the harbor."]).shape == (1, 16)
    export(runs / "clip" / "final", tmp_path / "final-copy")  # a CLIP folder exports as it is
    assert machine_paths_in(tmp_path / "final-copy") == []
    # `mdream train clip --export` writes through the same export
    assert machine_paths_in(runs / "clip-export") == []
    assert {"training_summary.json", "train_config.json", "model.safetensors"} <= {p.name for p in (runs / "clip-export").iterdir()}
    assert "apply to tokenizer" in export(runs / "clip", tmp_path / "y", "--guidance-scale", "1", code=2).output


def test_export_refuses_what_is_not_a_checkpoint(tmp_path):
    assert "does not exist" in export(tmp_path / "missing", tmp_path / "out", code=2).output
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    assert "not a checkpoint" in export(tmp_path / "junk", tmp_path / "out", code=2).output
    assert "is a file" in export(tmp_path / "junk" / "notes.txt", tmp_path / "out", code=2).output
    (tmp_path / "empty-run" / "checkpoints").mkdir(parents=True)
    assert "no complete checkpoint" in export(tmp_path / "empty-run", tmp_path / "out", code=2).output
    assert not (tmp_path / "out").exists()


# ---- the wheel, as a user installs it ---------------------------------------------------------------


def run(args: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_wheel_runs_the_storyboard_job_from_a_fresh_venv(tmp_path):
    """Build the wheel, install it alone into a new venv (the heavy dependencies come from this interpreter's
    site-packages through a .pth file, which does not run this checkout's editable finder), then run the
    README's main job from a folder outside the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "2")
    # build from a copy of the sources: an in-tree build leaves build/ behind, whose stale files later wheels pick up
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(CHECKOUT / name, source / name)
    shutil.copytree(CHECKOUT / "mdream", source / "mdream", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", tmp_path / "dist", source], tmp_path, env)
    wheel = next((tmp_path / "dist").glob("mdream-*.whl"))

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index", wheel],
        tmp_path, env)
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env)
                   .stdout.strip())
    ours = [p for p in dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"]]) if Path(p).is_dir()]
    (purelib / "_mdream_test_deps.pth").write_text("\n".join(ours) + "\n")

    work = tmp_path / "work"
    shutil.copytree(CHECKOUT / "examples" / "scripts", work, ignore=shutil.ignore_patterns(".mdream", "__pycache__"))
    mdream_bin = venv / "bin" / "mdream"
    where = run([python, "-c", "import mdream; print(mdream.__file__)"], work, env).stdout.strip()
    assert inside(where, venv), where
    # every file the toy bundle loads lies in the venv, the encoder's CLIP included
    probe = ("import json; from pathlib import Path; from mdream.models.bundle import ModelBundle; "
             "from mdream.models.loading import resolve_reference; b = ModelBundle.load('toy'); "
             "paths = [r.location for r in b.components.values() if r.exists]; "
             "encoder = b.component('keyframe_encoder').location; "
             "clip = json.loads((Path(encoder) / 'keyframe_encoder.json').read_text())['vision_model']; "
             "print(json.dumps(paths + [resolve_reference(encoder, clip)]))")
    loaded = json.loads(run([python, "-c", probe], work, env).stdout)
    assert len(loaded) >= 5 and all(inside(p, venv) for p in loaded), loaded

    run([mdream_bin, "script-validate", "storyboard.yaml"], work, env)
    run([mdream_bin, "generate", "storyboard.yaml", "-o", "out/storyboard.mp4", "--until", "render", "--device", "cpu"],
        work, env)
    keyframes = sorted((work / "out" / "storyboard" / "keyframes").glob("*.png"))
    shots = sum(len(arc["shots"]) for arc in yaml.safe_load((work / "storyboard.yaml").read_text())["arcs"])
    assert len(keyframes) == shots == 10
    report = json.loads(run([mdream_bin, "eval", "out/storyboard", "--script", "storyboard.yaml", "--json"], work, env).stdout)
    # the shipped renderer scores 1.000 on all four at its saved sampling settings; noise or a blank frame scores ~0
    for metric in ("scene_accuracy", "cast_accuracy", "cast_set_accuracy", "identity_accuracy"):
        assert report[metric] >= 0.8, (metric, report[metric])
