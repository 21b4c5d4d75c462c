"""``--offload`` and freeing models between stages.

With ``--offload`` a stage's models wait in CPU memory and their large parts (``offload_units``) take turns on the
device. Without a GPU the execution device is the CPU too: what these tests check is the
bookkeeping that decides the device's contents (one unit at a time, each sub-module called only while its unit
is the one on the device, which is what a GPU needs) and that the outputs do not change.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_script_dict, write_script
from PIL import Image
from test_main_job import decoded_frames
from test_models_fullsize import conditions, sdxl_decoder
from torch import nn

from mdream.models import registry
from mdream.models.bundle import ModelBundle
from mdream.models.offload import OffloadGroup, execution_device, onload
from mdream.stages.options import RunOptions
from mdream.stages.run import generate


class TwoParts(nn.Module):
    offload_units = ("first", "second", "missing")

    def __init__(self):
        super().__init__()
        self.first, self.second, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.second(self.first(x)))


def test_the_group_keeps_one_unit_on_the_device_and_lets_go_of_its_hooks():
    model, other = TwoParts(), TwoParts()
    x = torch.randn(3, 4)
    expected = model(x)
    group = OffloadGroup("cpu")
    group.add("a", model)
    group.add("b", other)
    assert sorted(group.units) == ["a.first", "a.second", "b.first", "b.second"]  # a unit that is absent is skipped
    assert execution_device(model, torch.device("meta")) == torch.device("cpu")
    assert group.resident is None and group.moves == 0
    assert torch.equal(model(x), expected)  # same numbers through the hooks
    assert group.resident == "a.second" and group.moves == 2
    model.second(x)
    assert group.moves == 2  # already there: nothing moves
    other.first(x)
    assert group.resident == "b.first" and group.moves == 3
    onload(model.first)  # a direct use of a unit's weights (an embedding table) moves it first
    assert group.resident == "a.first"
    onload(model.head)  # not a unit: nothing to do
    assert group.resident == "a.first"
    group.release()
    assert not hasattr(model.first, "_hf_hook") and not hasattr(model.second, "_hf_hook")
    assert execution_device(model, torch.device("meta")) == torch.device("meta")
    assert torch.equal(model(x), expected)


def watch_residency(monkeypatch) -> tuple[list[OffloadGroup], list[str]]:
    """Every offload group made from now on, and a list that collects each call into a unit's sub-modules made
    while another unit was the one on the device (on a GPU: weights on the CPU, inputs on the GPU)."""
    groups: list[OffloadGroup] = []
    wrong: list[str] = []
    add = OffloadGroup.add

    def watched(self, name, model):
        add(self, name, model)
        if self not in groups:
            groups.append(self)
        for unit_name, unit in self.units.items():
            if not unit_name.startswith(name + "."):
                continue
            # the unit's own forward moves it first (its accelerate hook); its parts must find it there
            for sub_name, sub in unit.named_modules():
                if sub is not unit:
                    sub.register_forward_pre_hook(
                        lambda _m, _a, g=self, u=unit_name, s=sub_name: wrong.append(f"{u}.{s} ran while {g.resident} "
                                                                                    "was on the device")
                        if g.resident != u else None)
        return model

    monkeypatch.setattr(OffloadGroup, "add", watched)
    return groups, wrong


#: where the model-level tests compute: the CPU, and a GPU where there is one (then the units really move)
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", DEVICES)
def test_full_size_renderer_with_a_vae_samples_the_same_offloaded(monkeypatch, device):
    groups, wrong = watch_residency(monkeypatch)
    tokens, faces, mask, text = (t.to(device) for t in conditions())
    plain = sdxl_decoder().to(device).generate(tokens, faces, mask, text, num_inference_steps=2,
                                               generator=torch.Generator().manual_seed(0)).images
    decoder = sdxl_decoder()
    OffloadGroup(device).add("keyframe_decoder", decoder)
    offloaded = decoder.generate(tokens, faces, mask, text, num_inference_steps=2,
                                 generator=torch.Generator().manual_seed(0)).images
    assert np.array_equal(plain, offloaded)
    assert not wrong
    assert groups[0].resident == "keyframe_decoder.vae" and groups[0].moves >= 2  # UNet, then the VAE's decode


def _frame(path: Path, colour) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), colour).save(path)
    return str(path.name)


def _mixed_script(folder: Path) -> Path:
    """Four short shots, the second with a given keyframe, and a reference frame: the keyframe encoder and the AR
    model take turns in the keyframes stage."""
    data = small_script_dict(4)
    shots = data["arcs"][0]["shots"]
    for shot in shots:
        shot["duration"] = 1.0
    shots[1]["keyframe"] = _frame(folder / "given.png", (40, 120, 60))
    data["style"] = {"text": "toy", "reference_frames": [_frame(folder / "reference.png", (180, 70, 50))]}
    return write_script(folder, data)


def test_an_offloaded_movie_is_the_same_movie(monkeypatch, tmp_path):
    movies = {}
    for offload in (False, True):
        folder = tmp_path / ("offloaded" if offload else "plain")
        script = _mixed_script(folder)
        if offload:
            groups, wrong = watch_residency(monkeypatch)
        result = generate(script, folder / "movie.mp4", RunOptions(device="cpu", quiet=True, offload=offload))
        movies[offload] = result
    assert not wrong
    # encode (text), keyframes (keyframe encoder and AR backbone, in turns), render, video: one group per stage
    assert len(groups) == 4 and all(not g.units for g in groups)  # released after each stage
    plain, offloaded = movies[False], movies[True]
    assert plain.movie_kind == offloaded.movie_kind == "video"
    for a, b in zip(decoded_frames(plain.output), decoded_frames(offloaded.output), strict=True):
        assert np.array_equal(a, b)
    pngs = sorted(p.name for p in (plain.movie_dir / "keyframes").glob("*.png"))
    assert len(pngs) == 4
    for name in pngs:
        assert np.array_equal(*(np.asarray(Image.open(m.movie_dir / "keyframes" / name)) for m in movies.values()))


def test_a_stage_lets_go_of_its_models_before_the_next_loads(monkeypatch, tmp_path):
    stage_of = {"face_embedder": "encode", "text_encoder": "encode", "keyframe_encoder": "keyframes",
                "keyframe_ar": "keyframes", "keyframe_decoder": "render", "video": "video"}
    loaded: list[tuple[str, weakref.ref]] = []
    alive_at_load: list[tuple[str, list[str]]] = []
    load = registry.load_model

    def recording(class_name, location, name, device=None):
        alive_at_load.append((name, [n for n, ref in loaded if ref() is not None and stage_of[n] != stage_of[name]]))
        model = load(class_name, location, name, device)
        loaded.append((name, weakref.ref(model)))
        return model

    monkeypatch.setattr(registry, "load_model", recording)
    script = write_script(tmp_path / "movie", small_script_dict(2))
    generate(script, tmp_path / "movie.mp4", RunOptions(device="cpu", quiet=True))
    assert [name for name, _ in alive_at_load] == ["face_embedder", "text_encoder", "keyframe_encoder", "keyframe_ar",
                                                   "keyframe_decoder", "video"]
    assert all(not alive for _, alive in alive_at_load), alive_at_load
    gc.collect()
    assert all(ref() is None for _, ref in loaded)


def test_offload_is_a_flag_of_every_stage_command():
    from typer.testing import CliRunner

    from mdream.cli.main import app

    for command in ("generate", "encode", "keyframes", "render", "video"):
        result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
        assert "--offload" in result.output, command


@pytest.mark.parametrize("device", DEVICES)
def test_a_full_size_video_model_samples_the_same_offloaded(monkeypatch, tmp_path, device):
    from test_video import tiny_svd_folder

    from mdream.models.video import ImageToVideoModel, ImageToVideoPipeline

    folder = tiny_svd_folder(tmp_path / "svd")
    image = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    frames = []
    groups, wrong = watch_residency(monkeypatch)
    for offload in (False, True):
        model = ImageToVideoModel.from_pretrained(folder)
        model.config.width = model.config.height = 64
        if offload:
            OffloadGroup(device).add("video", model)
        else:
            model.to(device)
        frames.append(ImageToVideoPipeline(model)(image, num_frames=6, clip_length=4, num_inference_steps=2,
                                                  generator=torch.Generator().manual_seed(0)).frames)
    assert np.array_equal(*frames)
    assert not wrong
    # per clip: the anchor's embedding, the VAE's encode, the UNet, the VAE's decode; so units moved at least 4 times
    assert sorted(groups[0].units) == ["video.image_encoder", "video.unet", "video.vae"] and groups[0].moves >= 4


def test_a_cuda_run_reports_each_stages_peak_gpu_memory(monkeypatch, tmp_path, capsys):
    """The runner reads torch.cuda's peak for each stage that works (a stand-in for torch.cuda here: no GPU)."""
    from mdream.cli._display import show_generate
    from mdream.stages import pipeline

    class Peaks:
        resets = 0

        def reset_peak_memory_stats(self, device):
            assert device == "cuda:1"
            self.resets += 1

        def max_memory_allocated(self, device):
            return 1_500_000_000 + self.resets

    peaks = Peaks()
    monkeypatch.setattr(pipeline, "_cuda_device", lambda project: (peaks, "cuda:1"))
    script = write_script(tmp_path / "movie", small_script_dict(2))
    result = generate(script, tmp_path / "movie.mp4", RunOptions(device="cpu", quiet=True), until="render")
    worked = {r.stage: r.peak_gpu_bytes for r in result.reports if r.stage in ("encode", "keyframes", "render")}
    assert worked == {"encode": 1_500_000_001, "keyframes": 1_500_000_002, "render": 1_500_000_003}
    assert result.to_dict()["stages"][0]["peak_gpu_bytes"] == 1_500_000_001
    show_generate(result)
    assert "peak GPU" in capsys.readouterr().out
    again = generate(script, tmp_path / "movie.mp4", RunOptions(device="cpu", quiet=True), until="render")
    assert all(r.peak_gpu_bytes is None for r in again.reports)  # nothing to do: nothing measured


def test_media_modes_take_offload_too(tmp_path):
    """`mdream encode IMAGES --offload` and `mdream render TOKENS --offload` write what they write without it."""
    from typer.testing import CliRunner

    from mdream.cli.main import app

    for i, colour in enumerate([(200, 60, 60), (60, 160, 90)]):
        _frame(tmp_path / "frames" / f"{i}.png", colour)
    outputs = {}
    for flag in ([], ["--offload"]):
        name = "offloaded" if flag else "plain"
        tokens = tmp_path / f"{name}.safetensors"
        for args in (["encode", str(tmp_path / "frames"), "-o", str(tokens), "--cache-dir", str(tmp_path / name)],
                     ["render", str(tokens), "-o", str(tmp_path / name / "pngs"), "--steps", "2"]):
            result = CliRunner().invoke(app, [*args, "--device", "cpu", *flag])
            assert result.exit_code == 0, result.output
        outputs[name] = [tokens.read_bytes()] + [p.read_bytes() for p in sorted((tmp_path / name / "pngs").glob("*.png"))]
    assert len(outputs["plain"]) == 3 and outputs["plain"] == outputs["offloaded"]


def test_an_offloaded_ar_session_slides_its_window_with_the_encoder_taking_turns(monkeypatch, tmp_path_factory):
    """The keyframes stage's pattern: the keyframe encoder runs between the AR model's steps (given keyframes), and
    the shifting window rotates cached keys with the backbone's rotary embedding, outside any forward."""
    from test_models_keyframe_ar import backbone_folder, make_model, shot

    folder = backbone_folder.__wrapped__(tmp_path_factory)
    groups, wrong = watch_residency(monkeypatch)
    runs = []
    for offload in (False, True):
        encoder, model = ModelBundle.find("toy").load("keyframe_encoder"), make_model(folder).eval()
        if offload:
            group = OffloadGroup("cpu")
            group.add("keyframe_encoder", encoder)
            group.add("keyframe_ar", model)
        g, generator = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
        session = model.start_movie(window=48, slide="shift")
        tokens = []
        for i in range(24):
            image = torch.randint(0, 256, (1, 32, 32, 3), generator=g, dtype=torch.uint8).numpy()
            given = encoder.encode(image)[0] if i % 4 == 0 else None
            tokens.append(session.step(shot(i, g), given=given, temperature=1.0, generator=generator))
        assert session.shifts >= 2
        runs.append(torch.stack(tokens))
    assert torch.equal(*runs)
    assert not wrong and groups[0].moves > 10  # the encoder and the backbone took turns
