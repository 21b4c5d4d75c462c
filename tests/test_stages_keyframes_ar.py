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
