"""ArtifactStore in one process: round trips, checksums, corruption, quarantine, manifests."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mdream.cache import Artifact, ArtifactStatus, ArtifactStore, ArtifactWriter, artifact_key
from mdream.cache.store import META_FILE, QUARANTINE_DIR

STAGE = "render"


def make_key(i: int = 0) -> str:
    return artifact_key(STAGE, "1", "toy", {"shot": i}, 0, [])


def produce_basic(writer: ArtifactWriter, payload: bytes = b"some bytes " * 1000) -> None:
    writer.save_bytes("data.bin", payload)
    writer.save_json("info.json", {"n": 3})


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "cache")


def quarantined(store: ArtifactStore) -> list[Path]:
    qdir = store.root / QUARANTINE_DIR / STAGE
    return sorted(p for p in qdir.iterdir() if p.is_dir()) if qdir.exists() else []


def test_round_trip_of_every_file_kind(store: ArtifactStore, tmp_path: Path) -> None:
    key = make_key()
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=gen)
    tensors = {"tokens": base, "view": base[:, :3], "ids": torch.arange(5, dtype=torch.int64)}
    rgb = np.random.default_rng(0).integers(0, 256, size=(16, 24, 3), dtype=np.uint8)
    image = Image.fromarray(rgb, "RGB")
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)

    assert store.status(STAGE, key) is ArtifactStatus.MISSING
    assert store.open(STAGE, key) is None
    with store.claim(STAGE, key) as writer:
        writer.save_tensors("tokens.safetensors", tensors)
        writer.save_image("keyframe.png", image)
        writer.save_json("info.json", {"shot": "act1-001", "scores": [0.5, 1.25]})
        writer.save_bytes("raw.bin", b"\x00\x01\xff")
        writer.add_file("clip.mp4", clip)
        writer.path("frames/0000.txt").write_text("written directly")
        writer.metadata["shot_id"] = "act1-001"
    assert writer.artifact is not None

    assert store.status(STAGE, key) is ArtifactStatus.DONE
    assert store.status(STAGE, key, checksums=True) is ArtifactStatus.DONE
    art = store.open(STAGE, key)
    assert isinstance(art, Artifact)
    assert art.dir == store.root / STAGE / key[:2] / key
    loaded = art.load_tensors("tokens.safetensors")
    assert set(loaded) == set(tensors)
    for name, t in tensors.items():
        assert torch.equal(loaded[name], t)
    img = art.load_image("keyframe.png")
    assert img.size == (24, 16) and np.array_equal(np.asarray(img), rgb)
    assert art.load_json("info.json") == {"shot": "act1-001", "scores": [0.5, 1.25]}
    assert art.read_bytes("raw.bin") == b"\x00\x01\xff"
    assert art.read_bytes("clip.mp4") == clip.read_bytes()
    assert art.path("frames/0000.txt").read_text() == "written directly"
    assert art.metadata == {"shot_id": "act1-001"}
    with pytest.raises(KeyError, match="no file"):
        art.path("absent.bin")

    meta = json.loads((art.dir / META_FILE).read_text())
    assert meta["schema_version"] == 1 and meta["stage"] == STAGE and meta["key"] == key
    assert set(meta["files"]) == {"tokens.safetensors", "keyframe.png", "info.json", "raw.bin", "clip.mp4",
                                  "frames/0000.txt"}
    assert meta["files"]["raw.bin"]["size"] == 3
    assert set(meta["producer"]) == {"host", "pid", "mdream_version"}
    assert meta["created"].endswith("Z")
    # nothing but the final dir is left in the shard
    assert [p.name for p in art.dir.parent.iterdir()] == [key]


def test_claim_on_a_done_artifact_returns_none_unless_forced(store: ArtifactStore) -> None:
    key = make_key()
    art = store.get_or_produce(STAGE, key, produce_basic)
    assert store.claim(STAGE, key, wait=False) is None
    assert store.claim(STAGE, key, wait=True) is None
    with store.claim(STAGE, key, force=True) as writer:
        writer.save_bytes("data.bin", b"replacement")
    new = store.open(STAGE, key)
    assert new is not None and new.read_bytes("data.bin") == b"replacement"
    assert "info.json" not in new.files  # replaced as a whole, not merged
    assert sorted(p.name for p in art.dir.parent.iterdir()) == [key]  # the old copy is gone


def test_get_or_produce_produces_once(store: ArtifactStore) -> None:
    calls: list[str] = []

    def produce(writer: ArtifactWriter) -> None:
        calls.append(writer.key)
        produce_basic(writer)

    key = make_key()
    a = store.get_or_produce(STAGE, key, produce)
    b = store.get_or_produce(STAGE, key, produce)
    assert calls == [key]
    assert a.dir == b.dir and b.load_json("info.json") == {"n": 3}


def test_a_failing_producer_publishes_nothing_and_releases_the_lock(store: ArtifactStore) -> None:
    key = make_key()

    def broken(writer: ArtifactWriter) -> None:
        writer.save_bytes("data.bin", b"half")
        raise RuntimeError("model blew up")

    with pytest.raises(RuntimeError, match="model blew up"):
        store.get_or_produce(STAGE, key, broken)
    assert store.status(STAGE, key) is ArtifactStatus.MISSING
    shard = store.artifact_dir(STAGE, key).parent
    assert list(shard.iterdir()) == []  # temp dir removed
    assert store.get_or_produce(STAGE, key, produce_basic).load_json("info.json") == {"n": 3}


def test_unserialisable_metadata_publishes_nothing(store: ArtifactStore) -> None:
    key = make_key()
    writer = store.claim(STAGE, key)
    assert writer is not None
    writer.save_bytes("data.bin", b"x")
    writer.metadata["bad"] = object()
    with pytest.raises(TypeError, match="metadata"):
        writer.commit()
    assert store.status(STAGE, key) is ArtifactStatus.MISSING
    assert store.claim(STAGE, key, wait=False) is not None  # lock was released


@pytest.mark.parametrize("name", ["../escape.bin", "/abs.bin", ".hidden", "meta.json", "a//b", ""])
def test_bad_file_names_are_rejected(store: ArtifactStore, name: str) -> None:
    with store.claim(STAGE, make_key()) as writer:
        with pytest.raises(ValueError):
            writer.save_bytes(name, b"x")
        writer.save_bytes("ok.bin", b"x")


def test_in_process_second_claim_sees_the_lock(store: ArtifactStore) -> None:
    key = make_key()
    writer = store.claim(STAGE, key)
    assert writer is not None
    assert store.status(STAGE, key) is ArtifactStatus.IN_PROGRESS
    assert store.claim(STAGE, key, wait=False) is None
    assert store.claim(STAGE, key, wait=0.1) is None  # timed out
    writer.abort()
    assert store.status(STAGE, key) is ArtifactStatus.MISSING


def test_leftover_lock_files_do_not_block(store: ArtifactStore) -> None:
    # A lock file left behind (by a killed process, or a SoftFileLock-style marker holding a dead
    # pid and host name) is only a name: the flock on it is what counts, and nobody holds that.
    key = make_key()
    lock_path = store.lock_path(STAGE, key)
    lock_path.parent.mkdir(parents=True)
    lock_path.write_text("999999\nsome-other-host\n")
    assert store.status(STAGE, key) is ArtifactStatus.MISSING
    with store.claim(STAGE, key, wait=False) as writer:
        produce_basic(writer)
    assert store.status(STAGE, key) is ArtifactStatus.DONE


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def delete(path: Path) -> None:
    path.unlink()


def garble(path: Path) -> None:
    path.write_text("{not json")


@pytest.mark.parametrize(
    ("target", "damage", "cheap_detects", "reason"),
    [
        ("data.bin", truncate, True, "bytes, expected"),
        ("data.bin", flip_byte, False, "sha256"),
        ("data.bin", delete, True, "missing"),
        (META_FILE, delete, True, "meta.json is missing"),
        (META_FILE, garble, True, "not valid JSON"),
    ],
)
def test_corruption_is_detected_quarantined_and_recomputed(
    store: ArtifactStore, caplog: pytest.LogCaptureFixture, target: str, damage, cheap_detects: bool,
    reason: str,
) -> None:
    key = make_key()
    art = store.get_or_produce(STAGE, key, produce_basic)
    damage(art.dir / target)

    cheap = store.status(STAGE, key)
    assert cheap is (ArtifactStatus.CORRUPT if cheap_detects else ArtifactStatus.DONE)
    report = store.check(STAGE, key, checksums=True)
    assert report.status is ArtifactStatus.CORRUPT and reason in (report.reason or "")

    with caplog.at_level(logging.WARNING, logger="mdream.cache"):
        assert store.open(STAGE, key) is None
    assert any(str(art.dir) in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    moved = quarantined(store)
    assert len(moved) == 1 and moved[0].name.startswith(key)
    record = json.loads(moved[0].with_name(moved[0].name + ".json").read_text())
    assert reason in record["reason"] and record["original"] == str(art.dir)
    assert not art.dir.exists()
    assert store.status(STAGE, key) is ArtifactStatus.MISSING

    calls = []
    again = store.get_or_produce(STAGE, key, lambda w: (calls.append(1), produce_basic(w)))
    assert calls == [1] and again.read_bytes("data.bin") == b"some bytes " * 1000
    assert store.status(STAGE, key, checksums=True) is ArtifactStatus.DONE


def test_claim_quarantines_a_corrupt_artifact_before_reproducing(store: ArtifactStore) -> None:
    key = make_key()
    art = store.get_or_produce(STAGE, key, produce_basic)
    flip_byte(art.dir / "data.bin")
    with store.claim(STAGE, key, wait=False) as writer:  # not None: corrupt counts as missing
        produce_basic(writer)
    assert len(quarantined(store)) == 1
    assert store.status(STAGE, key, checksums=True) is ArtifactStatus.DONE


def test_meta_for_another_key_is_corrupt(store: ArtifactStore) -> None:
    a, b = make_key(1), make_key(2)
    art_a = store.get_or_produce(STAGE, a, produce_basic)
    dir_b = store.artifact_dir(STAGE, b)
    dir_b.parent.mkdir(parents=True, exist_ok=True)
    import shutil

    shutil.copytree(art_a.dir, dir_b)  # a copy under the wrong name must not be trusted
    assert store.status(STAGE, b) is ArtifactStatus.CORRUPT
    assert store.open(STAGE, b) is None


def test_iter_artifacts_and_clean_leftovers(store: ArtifactStore) -> None:
    keys = [make_key(i) for i in range(3)]
    for k in keys:
        store.get_or_produce(STAGE, k, produce_basic)
    store.get_or_produce("video", keys[0], produce_basic)
    store.write_manifest("run1", {"x": 1})
    assert sorted(store.iter_artifacts()) == sorted([(STAGE, k) for k in keys] + [("video", keys[0])])
    assert sorted(store.iter_artifacts(STAGE)) == sorted((STAGE, k) for k in keys)
    # debris of a dead writer
    debris = store.artifact_dir(STAGE, keys[1]).parent / f".tmp-{keys[1]}-999999-abcd1234"
    debris.mkdir()
    (debris / "half.bin").write_bytes(b"x")
    assert store.clean_leftovers() == 1
    assert not debris.exists()
    assert store.status(STAGE, keys[1]) is ArtifactStatus.DONE


def test_status_of_an_empty_store_creates_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "nothing-here")
    assert store.status(STAGE, make_key()) is ArtifactStatus.MISSING
    assert store.open(STAGE, make_key()) is None
    assert store.read_manifest("run") is None
    assert list(store.iter_artifacts()) == []
    assert not (tmp_path / "nothing-here").exists()


def test_manifest_round_trip_and_atomic_replace(store: ArtifactStore) -> None:
    data = {"stages": {"render": {"act1-001": make_key(1)}}, "seed": 42}
    path = store.write_manifest("lighthouse", data)
    assert path == store.root / "runs" / "lighthouse.json"
    assert store.read_manifest("lighthouse") == data
    store.write_manifest("lighthouse", {"seed": 43})
    assert store.read_manifest("lighthouse") == {"seed": 43}
    assert [p.name for p in path.parent.iterdir()] == ["lighthouse.json"]  # no temp files left


def test_failed_manifest_write_keeps_the_old_one(store: ArtifactStore) -> None:
    store.write_manifest("run", {"ok": True})
    with pytest.raises(TypeError):
        store.write_manifest("run", {"bad": object()})
    assert store.read_manifest("run") == {"ok": True}


@pytest.mark.parametrize("content", [b"{\"truncated\": ", b"\xff\xfe garbage", b"[1, 2]", b""])
def test_corrupt_manifest_is_reported_and_treated_as_absent(
    store: ArtifactStore, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    path = store.write_manifest("run", {"ok": True})
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="mdream.cache"):
        assert store.read_manifest("run") is None
    assert any(str(path) in r.getMessage() for r in caplog.records)
    store.write_manifest("run", {"ok": 2})
    assert store.read_manifest("run") == {"ok": 2}


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", ""])
def test_bad_manifest_names_are_rejected(store: ArtifactStore, name: str) -> None:
    with pytest.raises(ValueError):
        store.write_manifest(name, {})


@pytest.mark.parametrize(("stage", "key"), [("Bad", make_key()), (STAGE, "../up"), (STAGE, "x"), ("runs", "ab")])
def test_bad_stage_or_key_is_rejected(store: ArtifactStore, stage: str, key: str) -> None:
    with pytest.raises(ValueError):
        store.status(stage, key)


def test_an_interrupt_inside_claim_leaves_no_temp_folder_and_frees_the_lock(tmp_path, monkeypatch):
    import mdream.cache.store as store_module

    store = ArtifactStore(tmp_path / "c")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # Ctrl-C after the temp folder exists, before the writer does
        m.setattr(store_module, "ArtifactWriter", interrupted)
        with pytest.raises(KeyboardInterrupt):
            store.claim("render", "k" * 64)
    assert not list(store.iter_leftovers())
    writer = store.claim("render", "k" * 64)  # the lock is free again
    assert writer is not None
    writer.abort()
