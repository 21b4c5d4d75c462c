"""The keyframes stage with an autoregressive model: every shot without a given keyframe is predicted from the
script and the shots before it, cached per shot with chained keys, resumable mid-movie."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml
from conftest import small_script_dict, write_script

from mdream.models.bundle import BUNDLES_DIR
from mdream.models.keyframe_ar import KeyframeAR, KeyframeARConfig
from mdream.stages.options import RunOptions
from mdream.stages.pipeline import Project, plan_keys
from mdream.stages.registry import new_stages
from mdream.stages.run import run_stages

TOY = BUNDLES_DIR / "toy"


@pytest.fixture(scope="module")
def ar_bundle(tmp_path_factory):
    """The toy bundle with a tiny random keyframe AR model (the toy encoder's 2 x 128 tokens, the toy CLIP's 64-d text)."""
    root = tmp_path_factory.mktemp("ar-bundle")
    torch.manual_seed(0)
    toy = yaml.safe_load((TOY / "bundle.yaml").read_text())
    components = {name: {"path": str((TOY / spec["path"]).resolve())} for name, spec in toy["components"].items()}
    clip = components["text_encoder"]["path"]
    model = KeyframeAR.build_toy(clip, KeyframeARConfig(num_tokens=2, token_dim=128, text_dim=64), hidden_size=32,
                                 num_layers=2, num_heads=4)
    model.save_pretrained(root / "ar")
    components["keyframe_ar"] = {"path": str(root / "ar")}
    components.pop("video")
    (root / "bundle.yaml").write_text(yaml.safe_dump({"name": "toy-with-ar", "components": components}))
    return root


def _script(folder, bundle, **output):
    data = small_script_dict()
    data["output"]["model_bundle"] = str(bundle)
    data["output"].update(output)
    return write_script(folder, data)


def _keys(script, cache):
    return plan_keys(Project.open(script, RunOptions(cache_dir=cache, quiet=True)), new_stages()[:2])["keyframes"]


def _tokens(script, cache):
    project = Project.open(script, RunOptions(cache_dir=cache, quiet=True))
    keys = _keys(script, cache)
    return keys, [project.store.open("keyframes", k).load_tensors("tokens")["tokens"] for k in keys]


def test_every_shot_is_predicted_and_a_seed_repeats(ar_bundle, tmp_path):
    script = _script(tmp_path / "movie", ar_bundle)
    reports = run_stages(script, "keyframes", RunOptions(cache_dir=tmp_path / "a", quiet=True), only=False)[1]
    assert [len(r.produced) for r in reports] == [6, 6]
    keys, first = _tokens(script, tmp_path / "a")
    assert all(t.shape == (2, 128) and torch.isfinite(t).all() for t in first)
    assert len({tuple(t.flatten()[:4].tolist()) for t in first}) == 6  # sampled, not one constant
    run_stages(script, "keyframes", RunOptions(cache_dir=tmp_path / "b", quiet=True), only=False)
    assert all(torch.equal(x, y) for x, y in zip(first, _tokens(script, tmp_path / "b")[1], strict=True))


def test_a_resumed_run_rebuilds_the_context_of_the_shots_before(ar_bundle, tmp_path):
    script = _script(tmp_path / "movie", ar_bundle)
    opts = RunOptions(cache_dir=tmp_path / "c", quiet=True)
    run_stages(script, "keyframes", opts, only=False)
    keys, whole = _tokens(script, tmp_path / "c")
    project = Project.open(script, opts)
    for key in keys[3:]:  # as if the run had been killed after shot 3
        shutil.rmtree(project.store.artifact_dir("keyframes", key))
    report = run_stages(script, "keyframes", opts)[1][0]
    assert (len(report.reused), len(report.produced)) == (3, 3)
    _, resumed = _tokens(script, tmp_path / "c")
    # the later shots saw the same context (shots 1-3 fed from the cache), so they drew the same tokens
    for x, y in zip(whole, resumed, strict=True):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)


def test_editing_one_shot_recomputes_it_and_the_shots_after(ar_bundle, tmp_path):
    script = _script(tmp_path / "movie", ar_bundle)
    opts = RunOptions(cache_dir=tmp_path / "c", quiet=True)
    run_stages(script, "keyframes", opts, only=False)
    data = yaml.safe_load(script.read_text())
    data["arcs"][0]["shots"][3]["descriptor"] = "Another description of shot 3."
    script.write_text(yaml.safe_dump(data, sort_keys=False))
    encode, keyframes = run_stages(script, "keyframes", opts, only=False)[1]
    assert encode.produced == ["act1-004"]
    assert keyframes.reused == ["act1-001", "act1-002", "act1-003"]
    assert keyframes.produced == ["act1-004", "act1-005", "act1-006"]


def test_the_temperature_is_part_of_a_predicted_shot_key(ar_bundle, tmp_path):
    default = _keys(_script(tmp_path / "a", ar_bundle), tmp_path / "none")
    greedy_script = _script(tmp_path / "b", ar_bundle, sampling={"temperature": 0.0})
    greedy = _keys(greedy_script, tmp_path / "none")
    assert not set(default) & set(greedy)
    run_stages(greedy_script, "keyframes", RunOptions(cache_dir=tmp_path / "g", quiet=True), only=False)
    _, tokens = _tokens(greedy_script, tmp_path / "g")
    run_stages(greedy_script, "keyframes", RunOptions(cache_dir=tmp_path / "g2", quiet=True), only=False)
    assert all(torch.equal(x, y) for x, y in zip(tokens, _tokens(greedy_script, tmp_path / "g2")[1], strict=True))


def test_a_bundle_without_an_ar_model_says_which_shots_need_one(tmp_path):
    from mdream.errors import NotBuiltError

    script = write_script(tmp_path / "movie", small_script_dict())
    toy = yaml.safe_load((TOY / "bundle.yaml").read_text())
    components = {name: {"path": str((TOY / spec["path"]).resolve())} for name, spec in toy["components"].items()
                  if name != "keyframe_ar"}
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "bundle.yaml").write_text(yaml.safe_dump({"name": "no-ar", "components": components}))
    data = yaml.safe_load(script.read_text())
    data["output"]["model_bundle"] = str(tmp_path / "b")
    script.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(NotBuiltError, match=r"no keyframe AR model.*act1-001"):
        run_stages(script, "keyframes", RunOptions(cache_dir=tmp_path / "c", quiet=True), only=False)


def test_an_ar_checkpoint_exports_as_a_portable_folder(ar_bundle, tmp_path):
    import json

    from mdream.training.export import export_model

    checkpoint = tmp_path / "run" / "checkpoints" / "step-0000010"
    shutil.copytree(ar_bundle / "ar", checkpoint / "keyframe_ar")
    (checkpoint / "state.json").write_text(json.dumps({"step": 10, "data": str(tmp_path / "run" / "data")}))
    result = export_model(tmp_path / "run", tmp_path / "models" / "ar")  # the run folder: its newest checkpoint
    assert result.kind == "keyframe-ar"
    shutil.move(tmp_path / "models", tmp_path / "moved")
    moved = tmp_path / "moved" / "ar"
    assert json.loads((moved / "state.json").read_text())["data"] == "data"  # a machine path kept by name only
    model = KeyframeAR.from_pretrained(moved)
    assert (model.config.num_tokens, model.config.token_dim) == (2, 128)


# ---- few-shot: the script's reference frames ---------------------------------------------------
@pytest.fixture(scope="module")
def few_shot_bundle(tmp_path_factory):
    """Like ``ar_bundle``, with a model that reads up to 2 reference frames in its prefix."""
    root = tmp_path_factory.mktemp("ar-refs-bundle")
    torch.manual_seed(0)
    toy = yaml.safe_load((TOY / "bundle.yaml").read_text())
    components = {name: {"path": str((TOY / spec["path"]).resolve())} for name, spec in toy["components"].items()}
    model = KeyframeAR.build_toy(components["text_encoder"]["path"],
                                 KeyframeARConfig(num_tokens=2, token_dim=128, text_dim=64, max_references=2),
                                 hidden_size=32, num_layers=2, num_heads=4)
    model.save_pretrained(root / "ar")
    components["keyframe_ar"] = {"path": str(root / "ar")}
    components.pop("video")
    (root / "bundle.yaml").write_text(yaml.safe_dump({"name": "toy-few-shot", "components": components}))
    return root


def _frame(path, colour):
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[:16] = colour
    pixels[16:] = (40, 120, 40)
    Image.fromarray(pixels).save(path)


def _with_references(folder, bundle, frames):
    data = small_script_dict()
    data["output"]["model_bundle"] = str(bundle)
    data["style"] = {"text": "flat colours", "reference_frames": [f"refs/{i}.png" for i in range(len(frames))]}
    script = write_script(folder, data)
    for i, colour in enumerate(frames):
        _frame(folder / "refs" / f"{i}.png", colour)
    return script


def test_reference_frames_enter_the_prefix_and_the_keys(few_shot_bundle, tmp_path):
    plain = _script(tmp_path / "plain", few_shot_bundle)
    script = _with_references(tmp_path / "refs", few_shot_bundle, [(200, 60, 60), (60, 60, 200)])
    run_stages(plain, "keyframes", RunOptions(cache_dir=tmp_path / "c0", quiet=True), only=False)
    run_stages(script, "keyframes", RunOptions(cache_dir=tmp_path / "c1", quiet=True), only=False)
    keys_plain, zero_shot = _tokens(plain, tmp_path / "c0")
    keys, few_shot = _tokens(script, tmp_path / "c1")
    assert not set(keys) & set(keys_plain)
    assert all(not torch.allclose(a, b, atol=1e-4) for a, b in zip(zero_shot, few_shot, strict=True))
    # the references' contents are in the keys: another picture under the same name recomputes the shots
    _frame(tmp_path / "refs" / "refs" / "1.png", (250, 250, 0))
    changed = _keys(script, tmp_path / "c1")
    assert not set(changed) & set(keys)
    report = run_stages(script, "keyframes", RunOptions(cache_dir=tmp_path / "c1", quiet=True))[1][0]
    assert len(report.produced) == 6
    _, again = _tokens(script, tmp_path / "c1")
    assert not torch.allclose(again[0], few_shot[0], atol=1e-4)
    # the same pictures again: the same keys, every shot reused
    _frame(tmp_path / "refs" / "refs" / "1.png", (60, 60, 200))
    assert _keys(script, tmp_path / "c1") == keys


def test_a_model_trained_without_references_leaves_them_out(ar_bundle, tmp_path, capsys):
    plain = _script(tmp_path / "plain", ar_bundle)
    script = _with_references(tmp_path / "refs", ar_bundle, [(200, 60, 60)])
    run_stages(plain, "keyframes", RunOptions(cache_dir=tmp_path / "c0", quiet=True), only=False)
    run_stages(script, "keyframes", RunOptions(cache_dir=tmp_path / "c1"), only=False)
    assert "trained without reference frames" in " ".join(capsys.readouterr().err.split())
    for a, b in zip(_tokens(plain, tmp_path / "c0")[1], _tokens(script, tmp_path / "c1")[1], strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_bad_reference_frame_is_a_located_input_error(few_shot_bundle, tmp_path, damage):
    import re

    from typer.testing import CliRunner

    from mdream.cli.main import app

    script = _with_references(tmp_path / "movie", few_shot_bundle, [(200, 60, 60), (60, 60, 200)])
    bad = tmp_path / "movie" / "refs" / "1.png"
    if damage == "missing":
        bad.unlink()
    else:
        bad.write_bytes(bad.read_bytes()[:40])  # a truncated PNG
    result = CliRunner().invoke(app, ["keyframes", str(script), "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    line = script.read_text().splitlines().index("  - refs/1.png") + 1
    assert re.search(rf"script\.yaml:{line}:\d+: style\.reference_frames\[1\]:", result.output), result.output


def test_a_reference_that_breaks_after_validation_is_located_too(few_shot_bundle, tmp_path):
    from mdream.errors import ScriptError

    script = _with_references(tmp_path / "movie", few_shot_bundle, [(200, 60, 60)])
    project = Project.open(script, RunOptions(cache_dir=tmp_path / "c", quiet=True))  # validated: the file is fine
    (tmp_path / "movie" / "refs" / "0.png").write_bytes(b"not a png")
    stage = new_stages()[1]
    with pytest.raises(ScriptError, match=r"script\.yaml:\d+:\d+: style\.reference_frames\[0\].*(damaged|not an image)"):
        stage.prepare(project)
    (tmp_path / "movie" / "refs" / "0.png").unlink()
    with pytest.raises(ScriptError, match=r"script\.yaml:\d+:\d+: style\.reference_frames\[0\].*not found"):
        new_stages()[1].reference_hashes(project)  # the keys of predicted shots hash the file


def _bundle_with_decode(ar_bundle, folder, decode):
    data = yaml.safe_load((ar_bundle / "bundle.yaml").read_text())
    data["components"]["keyframe_ar"]["decode"] = decode
    folder.mkdir(parents=True)
    (folder / "bundle.yaml").write_text(yaml.safe_dump(data))
    return folder


def test_the_bundle_s_decode_setting_picks_the_kv_cache(ar_bundle, tmp_path, capsys):
    """``decode: static`` predicts the tokens the dynamic cache does (a new bundle identity, so new keys);
    ``decode: graphs`` on a CPU says it cannot and decodes with the dynamic cache."""
    plain = _script(tmp_path / "plain", ar_bundle)
    run_stages(plain, "keyframes", RunOptions(cache_dir=tmp_path / "c", quiet=True), only=False)
    _, dynamic = _tokens(plain, tmp_path / "c")
    static = _script(tmp_path / "static", _bundle_with_decode(ar_bundle, tmp_path / "b-static", "static"))
    report = run_stages(static, "keyframes", RunOptions(cache_dir=tmp_path / "c", quiet=True), only=False)[1][1]
    assert len(report.produced) == 6
    _, tokens = _tokens(static, tmp_path / "c")
    for x, y in zip(tokens, dynamic, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)
    graphs = _script(tmp_path / "graphs", _bundle_with_decode(ar_bundle, tmp_path / "b-graphs", "graphs"))
    run_stages(graphs, "keyframes", RunOptions(cache_dir=tmp_path / "c", device="cpu"), only=False)
    assert "decoding with the dynamic KV cache" in capsys.readouterr().err
    _, tokens = _tokens(graphs, tmp_path / "c")
    assert all(torch.equal(x, y) for x, y in zip(tokens, dynamic, strict=True))
