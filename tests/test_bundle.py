"""Model bundles: lookup, clear errors, and identities that follow what a component loads."""

from __future__ import annotations

import json

import pytest

from mdream.errors import InputError, NotBuiltError
from mdream.models.bundle import ModelBundle


def _bundle(tmp_path):
    (tmp_path / "clip").mkdir(exist_ok=True)
    (tmp_path / "clip" / "weights.bin").write_bytes(b"clip-v1")
    (tmp_path / "encoder").mkdir(exist_ok=True)
    (tmp_path / "encoder" / "keyframe_encoder.json").write_text(json.dumps({"vision_model": "../clip"}))
    (tmp_path / "bundle.yaml").write_text(
        "name: t\ncomponents:\n  keyframe_encoder: {path: encoder}\n  text_encoder: {path: clip}\n"
    )
    return ModelBundle.load(str(tmp_path))


def test_identity_follows_linked_folders(tmp_path):
    before = _bundle(tmp_path).identity(["keyframe_encoder"])
    (tmp_path / "clip" / "weights.bin").write_bytes(b"clip-v2, retrained")  # retrain the vision tower
    assert ModelBundle.load(str(tmp_path)).identity(["keyframe_encoder"]) != before


def test_identity_ignores_other_components(tmp_path):
    before = _bundle(tmp_path).identity(["keyframe_encoder"])
    (tmp_path / "video").mkdir()
    (tmp_path / "video" / "w.bin").write_bytes(b"x")
    with open(tmp_path / "bundle.yaml", "a") as f:
        f.write("  video: {path: video}\n")
    assert ModelBundle.load(str(tmp_path)).identity(["keyframe_encoder"]) == before


def test_missing_component_is_not_built_and_unknown_bundle_is_input_error(tmp_path):
    bundle = _bundle(tmp_path)
    with pytest.raises(NotBuiltError, match="keyframe_decoder"):
        bundle.component("keyframe_decoder")
    with pytest.raises(InputError, match="not found"):
        ModelBundle.load(str(tmp_path / "nope"))
    (tmp_path / "bundle.yaml").write_text("components:\n  warp_drive: {path: x}\n")
    with pytest.raises(InputError, match="unknown component"):
        ModelBundle.load(str(tmp_path))


def test_the_toy_bundle_has_its_built_components():
    toy = ModelBundle.load("toy")
    for name in ("face_embedder", "text_encoder", "keyframe_encoder", "keyframe_decoder"):
        assert toy.component(name).exists
    with pytest.raises(NotBuiltError):
        toy.component("keyframe_ar")
