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
    for name in ("face_embedder", "text_encoder", "keyframe_encoder", "keyframe_decoder", "keyframe_ar"):
        assert toy.component(name).exists
    # the video model: present once it ships (test_shipped_weights says whether it does), else "not built"
    if toy.components["video"].present:
        assert toy.component("video").path.name == "toy-video"
    else:
        with pytest.raises(NotBuiltError):
            toy.component("video")


# ---------------------------------------------------------------- the model registry


def test_components_load_through_the_registry_by_their_recorded_class(tmp_path):
    from mdream.models.registry import register_model

    @register_model("FakeRegisteredModel")
    class FakeRegisteredModel:
        def __init__(self, source):
            self.source, self.device = source, None

        @classmethod
        def from_pretrained(cls, source):
            return cls(source)

        def to(self, device):
            self.device = device
            return self

    (tmp_path / "dec").mkdir()
    (tmp_path / "dec" / "keyframe_decoder.json").write_text(json.dumps({"_class_name": "FakeRegisteredModel"}))
    (tmp_path / "bundle.yaml").write_text("components:\n  keyframe_decoder: {path: dec}\n")
    model = ModelBundle.load(str(tmp_path)).load("keyframe_decoder", device="cpu")
    assert isinstance(model, FakeRegisteredModel)
    assert model.source == str(tmp_path / "dec") and model.device == "cpu"
    # an unknown class: a clear error naming the component and the classes mdream knows
    (tmp_path / "dec" / "keyframe_decoder.json").write_text(json.dumps({"_class_name": "WarpDrive"}))
    with pytest.raises(InputError, match=r"keyframe_decoder.*WarpDrive") as err:
        ModelBundle.load(str(tmp_path)).load("keyframe_decoder")
    assert "KeyframeDecoder" in err.value.hint
    # an explicit class in bundle.yaml wins over the folder's record
    (tmp_path / "bundle.yaml").write_text("components:\n  keyframe_decoder: {path: dec, class: FakeRegisteredModel}\n")
    assert ModelBundle.load(str(tmp_path)).class_name("keyframe_decoder") == "FakeRegisteredModel"


def test_the_toy_bundle_names_its_classes():
    toy = ModelBundle.load("toy")
    names = ("face_embedder", "text_encoder", "keyframe_encoder", "keyframe_decoder", "keyframe_ar")
    assert {name: toy.class_name(name) for name in names} == {
        "face_embedder": "FaceIdentityEmbedder",  # an .onnx file
        "text_encoder": "TextEncoder",  # a transformers CLIP folder
        "keyframe_encoder": "KeyframeEncoder",
        "keyframe_decoder": "KeyframeDecoder",
        "keyframe_ar": "KeyframeAR",
    }
    assert type(toy.load("keyframe_ar")).__name__ == "KeyframeAR"
    if toy.components["video"].present:
        assert type(toy.load("video")).__name__ == "ImageToVideoModel"
    else:
        with pytest.raises(NotBuiltError):
            toy.load("video")


def test_importing_the_registry_and_the_pipeline_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys, mdream.models.registry, mdream.stages.registry as r; r.pipeline(); "
            "import mdream.cli._common; print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- hub components


SHA_A, SHA_B = "a" * 40, "b" * 40


def _hub_bundle(tmp_path, revision=None):
    folder = tmp_path / "hubbundle"
    folder.mkdir(exist_ok=True)
    rev = f", revision: {revision}" if revision else ""
    (folder / "bundle.yaml").write_text(f"components:\n  video: {{hub: org/movie-model{rev}, class: VideoModel}}\n")
    return ModelBundle.load(str(folder))


def test_a_hub_component_is_keyed_by_the_commit_its_revision_resolves_to(tmp_path, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("no network call may happen")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    unresolved = _hub_bundle(tmp_path)._component_identity("video")
    assert unresolved == "hub-unresolved:org/movie-model@main"
    refs = tmp_path / "hf" / "hub" / "models--org--movie-model" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(SHA_A)
    assert _hub_bundle(tmp_path)._component_identity("video") == f"hub:org/movie-model@{SHA_A}"
    (refs / "main").write_text(SHA_B + "\n")  # `main` moved on: another identity
    assert _hub_bundle(tmp_path)._component_identity("video") == f"hub:org/movie-model@{SHA_B}"
    # HF_HUB_CACHE wins over HF_HOME; a pinned commit needs no cache at all
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    assert _hub_bundle(tmp_path)._component_identity("video") == unresolved
    assert _hub_bundle(tmp_path, revision=SHA_A)._component_identity("video") == f"hub:org/movie-model@{SHA_A}"
    assert _hub_bundle(tmp_path).identity(["video"]) != _hub_bundle(tmp_path, revision=SHA_A).identity(["video"])


# ---------------------------------------------------------------- remembered file hashes


def _counting_open(monkeypatch):
    import builtins

    from mdream.models import bundle as bundle_module

    calls = []

    def counting(path, *args, **kwargs):
        calls.append(str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(bundle_module, "open", counting, raising=False)
    return calls


@pytest.fixture
def remember_small_files(monkeypatch):
    from mdream.cache import hashes

    monkeypatch.setattr(hashes, "MIN_REMEMBERED_SIZE", 0)


def _fresh_process_state():
    from mdream.cache.hashes import forget_loaded_memos
    from mdream.models import bundle as bundle_module

    bundle_module._HASH_MEMO.clear()
    forget_loaded_memos()


def test_file_hashes_are_remembered_between_runs(tmp_path, monkeypatch, remember_small_files):
    import hashlib
    import os

    from mdream.models.bundle import hash_file

    monkeypatch.setenv("MDREAM_HOME", str(tmp_path / "home"))
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"w" * 5000)
    expected = hashlib.sha256(weights.read_bytes()).hexdigest()
    calls = _counting_open(monkeypatch)
    assert hash_file(weights) == expected and len(calls) == 1
    _fresh_process_state()
    assert hash_file(weights) == expected and len(calls) == 1  # from the memo file: not read again
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touched: hashed again
    _fresh_process_state()
    assert hash_file(weights) == expected and len(calls) == 2
    weights.write_bytes(b"v" * 5000)  # same size, new contents and mtime
    _fresh_process_state()
    assert hash_file(weights) == hashlib.sha256(b"v" * 5000).hexdigest() and len(calls) == 3


def test_a_corrupt_hash_memo_is_ignored_and_rebuilt(tmp_path, monkeypatch, remember_small_files):
    from mdream.models.bundle import hash_file

    monkeypatch.setenv("MDREAM_HOME", str(tmp_path / "home"))
    memo = tmp_path / "home" / "file-hashes.json"
    memo.parent.mkdir()
    memo.write_text('{"version": 1, "files": {')  # cut off mid-write by something else
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"x" * 100)
    _fresh_process_state()
    digest = hash_file(weights)
    assert json.loads(memo.read_text())["files"][str(weights)]["sha256"] == digest


def test_processes_sharing_the_hash_memo_lose_no_entry(tmp_path):
    import os
    import subprocess
    import sys

    for i in range(2):
        folder = tmp_path / f"p{i}"
        folder.mkdir()
        for j in range(15):
            (folder / f"{j}.bin").write_bytes(bytes([i, j]) * 100)
    code = ("import sys; from pathlib import Path; import mdream.cache.hashes as h; h.MIN_REMEMBERED_SIZE = 0; "
            "from mdream.models.bundle import hash_tree; hash_tree(Path(sys.argv[1]))")
    env = {**os.environ, "MDREAM_HOME": str(tmp_path / "home")}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"p{i}")], env=env) for i in range(2)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    files = json.loads((tmp_path / "home" / "file-hashes.json").read_text())["files"]
    assert len(files) == 30


def test_small_files_are_not_remembered(tmp_path, monkeypatch):
    from mdream.models.bundle import hash_file

    monkeypatch.setenv("MDREAM_HOME", str(tmp_path / "home"))
    photo = tmp_path / "face.png"
    photo.write_bytes(b"p" * 1000)
    _fresh_process_state()
    hash_file(photo)
    assert not (tmp_path / "home" / "file-hashes.json").exists()
