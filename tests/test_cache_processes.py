"""ArtifactStore across real processes: SIGKILLed writers, stale locks, concurrent fillers.

Each test starts worker processes (tests/cache_workers/worker.py) and kills them with SIGKILL, the
signal a process cannot catch, so that only the store's on-disk design can keep the cache sound.
"""

from __future__ import annotations

import collections
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mdream.cache import ArtifactStatus, ArtifactStore, artifact_key
from mdream.cache.store import OLD_PREFIX, TMP_PREFIX

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL and flock")

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "cache_workers" / "worker.py"
# fill_key/fill_payload: the workers' own definitions, loaded without touching sys.path.
_spec = importlib.util.spec_from_file_location("mdream_cache_test_worker", WORKER)
assert _spec is not None and _spec.loader is not None
worker_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker_module)

STAGE = "render"


def start_worker(mode: str, root: Path, key: str, marker: Path, *extra: str,
                 soft_locks: bool = False) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "MDREAM_TEST_SOFT_LOCKS": "1" if soft_locks else "0"}
    return subprocess.Popen(
        [sys.executable, str(WORKER), mode, str(root), STAGE, key, str(marker), *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def wait_for(marker: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"worker exited with {proc.returncode} before signalling:\n{err.decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("worker did not signal in time")
        time.sleep(0.005)
    return marker.read_text()


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def key_for(i: int = 0) -> str:
    return artifact_key(STAGE, "1", "toy", {"shot": i}, 0, [])


def shard_entries(store: ArtifactStore, key: str) -> list[str]:
    shard = store.artifact_dir(STAGE, key).parent
    return sorted(p.name for p in shard.iterdir()) if shard.exists() else []


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "cache")


def test_writer_killed_mid_write_leaves_no_artifact_and_is_recovered(store: ArtifactStore, tmp_path: Path) -> None:
    key = key_for()
    marker = tmp_path / "ready"
    proc = start_worker("crash-mid-write", store.root, key, marker, "24")
    wait_for(marker, proc)
    assert store.status(STAGE, key) is ArtifactStatus.IN_PROGRESS  # a live process holds the lock
    kill(proc)

    # What a killed writer leaves: its temp dir with a partial file, no final dir.
    entries = shard_entries(store, key)
    assert len(entries) == 1 and entries[0].startswith(f"{TMP_PREFIX}{key}-{proc.pid}-")
    partial = store.artifact_dir(STAGE, key).parent / entries[0] / "big.bin"
    assert partial.stat().st_size >= 12 << 20
    assert not store.artifact_dir(STAGE, key).exists()
    assert store.status(STAGE, key) is ArtifactStatus.MISSING
    assert store.status(STAGE, key, checksums=True) is ArtifactStatus.MISSING
    assert store.open(STAGE, key) is None

    t0 = time.monotonic()
    writer = store.claim(STAGE, key, wait=False)
    assert writer is not None and time.monotonic() - t0 < 2.0  # the lock died with its holder
    assert [e for e in shard_entries(store, key) if e.startswith(f"{TMP_PREFIX}{key}-{proc.pid}-")] == []
    with writer:
        writer.save_bytes("big.bin", b"complete")
    assert shard_entries(store, key) == [key]
    art = store.open(STAGE, key)
    assert art is not None and art.read_bytes("big.bin") == b"complete"


def test_writer_killed_just_before_publishing(store: ArtifactStore, tmp_path: Path) -> None:
    key = key_for()
    marker = tmp_path / "ready"
    proc = start_worker("crash-before-publish", store.root, key, marker)
    wait_for(marker, proc)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # meta.json was complete in the temp dir, but a temp dir is never an artifact.
    (tmp_dir,) = shard_entries(store, key)
    assert (store.artifact_dir(STAGE, key).parent / tmp_dir / "meta.json").exists()
    assert store.status(STAGE, key) is ArtifactStatus.MISSING
    art = store.get_or_produce(STAGE, key, lambda w: w.save_bytes("data.bin", b"fresh"))
    assert art.read_bytes("data.bin") == b"fresh"
    assert shard_entries(store, key) == [key]


def test_writer_killed_while_replacing_restores_the_old_artifact(store: ArtifactStore, tmp_path: Path) -> None:
    key = key_for()
    store.get_or_produce(STAGE, key, lambda w: w.save_bytes("data.bin", b"old contents"))
    marker = tmp_path / "ready"
    proc = start_worker("crash-mid-replace", store.root, key, marker)
    wait_for(marker, proc)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    entries = shard_entries(store, key)
    assert key not in entries and any(e.startswith(OLD_PREFIX) for e in entries)
    assert store.status(STAGE, key) is ArtifactStatus.MISSING  # honest: the final dir is gone right now

    assert store.claim(STAGE, key, wait=False) is None  # the lock holder restored the old one: DONE
    assert shard_entries(store, key) == [key]
    art = store.open(STAGE, key)
    assert art is not None and art.read_bytes("data.bin") == b"old contents"


@pytest.mark.parametrize("soft_locks", [False, True], ids=["flock", "soft-marker"])
def test_stale_lock_of_a_killed_holder_is_recovered_at_once(tmp_path: Path, soft_locks: bool) -> None:
    store = ArtifactStore(tmp_path / "cache", soft_locks=soft_locks)
    key = key_for()
    marker = tmp_path / "ready"
    proc = start_worker("hold", store.root, key, marker, soft_locks=soft_locks)
    assert wait_for(marker, proc) == "ready"
    assert store.claim(STAGE, key, wait=False) is None
    assert store.status(STAGE, key) is ArtifactStatus.IN_PROGRESS
    kill(proc)
    # The lock file stays (flock: an empty name; soft: a marker naming the dead pid) ...
    assert store.lock_path(STAGE, key).exists()
    # ... but nobody holds it any more.
    assert store.status(STAGE, key) is ArtifactStatus.MISSING
    t0 = time.monotonic()
    writer = store.claim(STAGE, key, wait=False)
    elapsed = time.monotonic() - t0
    assert writer is not None, "a dead process's lock must not block"
    assert elapsed < 2.0  # no lock timeout to sit out (generous only for loaded CI machines)
    with writer:
        writer.save_bytes("data.bin", b"after recovery")
    assert store.status(STAGE, key, checksums=True) is ArtifactStatus.DONE
    assert shard_entries(store, key) == [key]


def test_claim_without_wait_returns_none_while_a_live_process_holds_the_lock(
    store: ArtifactStore, tmp_path: Path
) -> None:
    key = key_for()
    marker = tmp_path / "ready"
    proc = start_worker("hold", store.root, key, marker)
    try:
        assert wait_for(marker, proc) == "ready"
        t0 = time.monotonic()
        assert store.claim(STAGE, key, wait=False) is None
        assert time.monotonic() - t0 < 1.0
        assert store.claim(STAGE, key, wait=0.2) is None  # bounded wait times out
        assert store.status(STAGE, key) is ArtifactStatus.IN_PROGRESS
        assert store.open(STAGE, key) is None
        # A second process sees it the same way.
        marker2 = tmp_path / "ready2"
        proc2 = start_worker("hold", store.root, key, marker2)
        assert wait_for(marker2, proc2) == "none"
        assert proc2.wait(timeout=30) == 3
        other = store.claim(STAGE, key_for(1), wait=False)  # other keys are not blocked
        assert other is not None
        other.abort()
    finally:
        kill(proc)


def test_claim_with_wait_returns_none_once_another_process_made_it(store: ArtifactStore, tmp_path: Path) -> None:
    key = key_for()
    marker = tmp_path / "ready"
    proc = start_worker("produce-slow", store.root, key, marker, "0.5")
    wait_for(marker, proc)
    assert store.status(STAGE, key) is ArtifactStatus.IN_PROGRESS
    assert store.claim(STAGE, key, wait=True) is None
    # It returned because the producer finished, not by producing (or giving up) itself:
    assert store.status(STAGE, key) is ArtifactStatus.DONE
    assert proc.wait(timeout=30) == 0
    art = store.open(STAGE, key)
    assert art is not None and art.read_bytes("data.bin") == b"made by the slow producer"


@pytest.mark.parametrize("soft_locks", [False, True], ids=["flock", "soft-marker"])
def test_concurrent_workers_fill_one_cache_without_duplicates(tmp_path: Path, soft_locks: bool) -> None:
    store = ArtifactStore(tmp_path / "cache", soft_locks=soft_locks)
    n_workers = 3
    n_keys = 20
    log = tmp_path / "productions.log"
    go = tmp_path / "go"
    procs, markers = [], []
    for w in range(n_workers):
        markers.append(tmp_path / f"ready{w}")
        procs.append(start_worker("fill", store.root, "unused", markers[-1], str(log), str(n_keys), str(go),
                                  soft_locks=soft_locks))
    for marker, proc in zip(markers, procs, strict=True):
        wait_for(marker, proc)
    go.write_text("go")  # all imported and waiting: start together
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()

    lines = log.read_text().splitlines()
    produced = collections.Counter(line.split()[0] for line in lines)
    keys = [worker_module.fill_key(i) for i in range(n_keys)]
    assert set(produced) == set(keys)
    assert all(count == 1 for count in produced.values()), produced
    producers = {line.split()[1] for line in lines}
    assert len(producers) >= 2, "the workers did not actually overlap"
    for k in keys:
        assert store.status(STAGE, k, checksums=True) is ArtifactStatus.DONE
        art = store.open(STAGE, k)
        assert art is not None
        assert art.read_bytes("data.bin") == worker_module.fill_payload(k)
        assert art.load_json("info.json") == {"key": k}
        assert shard_entries(store, k) == sorted(
            kk for kk in keys if kk[:2] == k[:2]
        )  # no temp or old dirs left anywhere


def test_killing_one_of_three_fillers_loses_nothing(store: ArtifactStore, tmp_path: Path) -> None:
    n_keys = 20
    log = tmp_path / "productions.log"
    go = tmp_path / "go"
    procs, markers = [], []
    for w in range(3):
        markers.append(tmp_path / f"ready{w}")
        procs.append(start_worker("fill", store.root, "unused", markers[-1], str(log), str(n_keys), str(go)))
    for marker, proc in zip(markers, procs, strict=True):
        wait_for(marker, proc)
    go.write_text("go")
    time.sleep(0.1)  # a few keys in: the victim is most likely holding a lock mid-write
    kill(procs[0])
    for proc in procs[1:]:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()

    produced = collections.Counter(line.split()[0] for line in log.read_text().splitlines())
    keys = [worker_module.fill_key(i) for i in range(n_keys)]
    assert set(produced) == set(keys)
    # Only the key the victim was writing when killed may have been produced a second time.
    assert sum(produced.values()) - n_keys <= 1, produced
    for k in keys:  # the survivors finished everything, and nothing published is damaged
        assert store.status(STAGE, k, checksums=True) is ArtifactStatus.DONE
        art = store.open(STAGE, k)
        assert art is not None and art.read_bytes("data.bin") == worker_module.fill_payload(k)
    leftovers = [p for p in store.root.glob(f"{STAGE}/*/.*")]
    assert leftovers == [], leftovers  # the victim's temp dir was cleaned by whoever took over its key
