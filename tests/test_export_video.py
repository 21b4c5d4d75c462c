"""``mdream train export`` of the video model: a tiny training run (a few steps of ``mdream train video``) exported
from each form of checkpoint into a folder that loads from any place, in float32 or float16 on disk."""

from __future__ import annotations

import json
import shutil
import stat

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from test_video import keyframe, tiny_clip
from typer.testing import CliRunner

from mdream.cache.store import default_mode
from mdream.cli.main import app
from mdream.models.video import ImageToVideoModel, ImageToVideoPipeline
from mdream.training.export import export_model, machine_paths
from mdream.training.video import VideoTrainingConfig, train_video

runner = CliRunner()
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A two-step video run (EMA on, a checkpoint each step) whose image encoder is a tiny CLIP in its own folder."""
    root = tmp_path_factory.mktemp("vrun")
    torch.manual_seed(0)
    settings = {"image_encoder": str(tiny_clip(root)), "clip_length": 2, "clips": 2, "steps": 2, "batch_size": 2,
                "warmup": 1, "checkpoint_every": 1, "log_every": 1, "sample_steps": 2, "ema_decay": 0.999}
    train_video(VideoTrainingConfig(**settings), root / "run", given=list(settings))
    return root / "run"


def _frames(folder) -> np.ndarray:
    model = ImageToVideoModel.from_pretrained(folder)
    return ImageToVideoPipeline(model)(keyframe(), 3, generator=torch.Generator().manual_seed(0)).frames


def _configs(folder) -> dict:
    return {str(p.relative_to(folder)): json.loads(p.read_text()) for p in folder.rglob("*.json")}


def test_a_run_exports_its_newest_checkpoints_ema_model_into_a_folder_that_loads_anywhere(run, tmp_path):
    dest = tmp_path / "models" / "toy-video"
    result = export_model(run, dest)
    newest = run / "checkpoints" / "step-0000002"
    assert result.kind == "video" and result.source == newest
    exported = load_file(str(dest / UNET_WEIGHTS))
    checkpoint = load_file(str(newest / "video" / UNET_WEIGHTS))
    assert exported.keys() == checkpoint.keys() and all(torch.equal(exported[k], checkpoint[k]) for k in exported)
    # the checkpoint's model holds the EMA weights, not the raw training weights
    raw = load_file(str(newest / "train" / "model.safetensors"))
    assert any(not torch.equal(exported[k], raw[f"video.unet.{k}"]) for k in exported)

    # nothing names a place on this machine: the image encoder is the folder's own copy
    configs = _configs(dest)
    assert not [(name, hit) for name, data in configs.items() for hit in machine_paths(data)]
    assert configs["train_config.json"]["image_encoder"] == "image_encoder"
    assert configs["train_config.json"]["steps"] == 2 and configs["state.json"]["step"] == 2
    assert (dest / "image_encoder" / "model.safetensors").is_file()

    # a copy elsewhere, with the CLIP the run was trained with gone, draws the same frames
    moved = tmp_path / "elsewhere" / "video"
    shutil.copytree(dest, moved)
    clip = tmp_path / "clip-away"
    shutil.move(run.parent / "clip", clip)
    try:
        assert np.array_equal(_frames(moved), _frames(newest / "video"))
    finally:
        shutil.move(clip, run.parent / "clip")


def test_each_form_of_a_video_checkpoint_exports(run, tmp_path):
    step = run / "checkpoints" / "step-0000001"
    assert export_model(step, tmp_path / "a").source == step
    assert json.loads((tmp_path / "a" / "state.json").read_text())["step"] == 1
    final = export_model(run / "final", tmp_path / "b")
    assert final.kind == "video" and (tmp_path / "b" / "training_summary.json").is_file()
    assert json.loads((tmp_path / "b" / "train_config.json").read_text())["image_encoder"] == "image_encoder"
    again = export_model(tmp_path / "b", tmp_path / "c")  # an exported folder exports as it is
    assert again.kind == "video" and _configs(tmp_path / "c") == _configs(tmp_path / "b")


def test_the_packaged_toy_clip_is_recorded_by_name(run, tmp_path):
    from mdream.training.video import TOY_CLIP

    source = tmp_path / "final"
    shutil.copytree(run / "final", source)
    cfg = json.loads((run / "train_config.json").read_text())
    (source / "train_config.json").write_text(json.dumps({**cfg, "image_encoder": str(TOY_CLIP)}))
    export_model(source, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "train_config.json").read_text())["image_encoder"] == "toy"


def test_fp16_export_stores_half_weights_that_load_back_into_float32(run, tmp_path):
    result = runner.invoke(app, ["train", "export", str(run), str(tmp_path / "half"), "--fp16", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["kind"] == "video"
    for weights in (UNET_WEIGHTS, "image_encoder/model.safetensors", "action_encoder/diffusion_pytorch_model.safetensors"):
        with safe_open(str(tmp_path / "half" / weights), "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}, weights  # noqa: SIM118
    # readable as any file the user writes (safetensors itself writes 0600): a shipped model's files go into the wheel
    modes = {p.relative_to(tmp_path): stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "half").rglob("*") if p.is_file()}
    assert set(modes.values()) == {default_mode()}, modes
    half = ImageToVideoModel.from_pretrained(tmp_path / "half")
    assert {p.dtype for p in half.parameters()} == {torch.float32}
    full = ImageToVideoModel.from_pretrained(run / "final")
    for a, b in zip(half.unet.parameters(), full.unet.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-2, rtol=1e-3)
    image = ImageToVideoPipeline.prepare_image(keyframe())
    assert torch.allclose(half.encode_image(image), full.encode_image(image), atol=1e-2)


@pytest.mark.parametrize("damage", ["torn weights", "no unet", "clip reference"])
def test_a_bad_video_checkpoint_exits_2_and_writes_nothing(run, tmp_path, damage):
    source = tmp_path / "final"
    shutil.copytree(run / "final", source)
    args = []
    if damage == "torn weights":
        weights = source / UNET_WEIGHTS
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "no unet":
        shutil.rmtree(source / "unet")
    else:
        args = ["--clip-reference", "../toy-clip"]
    result = runner.invoke(app, ["train", "export", str(source), str(tmp_path / "dest"), *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not (tmp_path / "dest").exists()
