"""A separate process that uses an ArtifactStore, for the cache's crash and concurrency tests.

    python worker.py MODE ROOT STAGE KEY MARKER [ARGS...]

MDREAM_TEST_SOFT_LOCKS=1 makes the store use SoftFileLock marker files instead of flock.

Modes (MARKER is a file the worker creates when the parent may act, e.g. SIGKILL it):
    hold                   claim KEY, write a file, signal, then sleep until killed
    crash-mid-write MB     claim KEY, signal, keep writing a large file until killed
    crash-before-publish   produce KEY but SIGKILL itself just before the temp dir is renamed
    crash-mid-replace      force-replace a DONE KEY, SIGKILL itself between the two renames
    produce-slow SECONDS   claim KEY, signal, sleep SECONDS, then publish and exit 0
    fill LOG N GO          (KEY unused) fill N keys in a random order, one O_APPEND log line per
                           production; starts once the file GO exists
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path

from mdream.cache import ArtifactStore, artifact_key
from mdream.cache import store as store_module


def signal_ready(marker: Path, text: str = "ready") -> None:
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, marker)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)


def fill_key(i: int) -> str:
    return artifact_key("render", "1", "bundle", {"shot": i}, 0, [])


def fill_payload(key: str) -> bytes:
    return (key.encode() * 2000)[:100_000]


def main(argv: list[str]) -> int:
    mode, root, stage, key, marker = argv[:5]
    extra = argv[5:]
    store = ArtifactStore(root, soft_locks=os.environ.get("MDREAM_TEST_SOFT_LOCKS") == "1")
    marker_path = Path(marker)

    if mode == "hold":
        writer = store.claim(stage, key, wait=False)
        if writer is None:
            signal_ready(marker_path, "none")
            return 3
        writer.save_bytes("partial.bin", b"x" * 1000)
        signal_ready(marker_path)
        time.sleep(600)
        return 0

    if mode == "crash-mid-write":
        megabytes = int(extra[0])
        writer = store.claim(stage, key, wait=False)
        assert writer is not None
        chunk = os.urandom(1 << 20)
        with open(writer.path("big.bin"), "wb") as f:
            for i in range(10_000):
                f.write(chunk)
                if i == megabytes // 2:
                    f.flush()
                    signal_ready(marker_path)
                if i >= megabytes:
                    time.sleep(0.01)  # keep "writing" slowly until killed
        return 1

    if mode == "crash-before-publish":
        real_rename = os.rename

        def rename(src, dst):  # noqa: ANN001 - mirrors os.rename
            if Path(src).name.startswith(store_module.TMP_PREFIX):
                signal_ready(marker_path)
                die()
            return real_rename(src, dst)

        store_module.os.rename = rename  # type: ignore[attr-defined]
        with store.claim(stage, key, wait=False) as writer:
            writer.save_bytes("data.bin", os.urandom(200_000))
        return 1

    if mode == "crash-mid-replace":
        real_rename = os.rename

        def rename(src, dst):  # noqa: ANN001
            if Path(src).name.startswith(store_module.TMP_PREFIX):  # the old copy is already aside
                signal_ready(marker_path)
                die()
            return real_rename(src, dst)

        store_module.os.rename = rename  # type: ignore[attr-defined]
        writer = store.claim(stage, key, wait=False, force=True)
        assert writer is not None
        with writer:
            writer.save_bytes("data.bin", b"new contents")
        return 1

    if mode == "produce-slow":
        writer = store.claim(stage, key, wait=False)
        assert writer is not None
        signal_ready(marker_path)
        time.sleep(float(extra[0]))
        with writer:
            writer.save_bytes("data.bin", b"made by the slow producer")
        return 0

    if mode == "fill":
        log_path, n, go = extra[0], int(extra[1]), Path(extra[2])
        signal_ready(marker_path)
        while not go.exists():
            time.sleep(0.005)
        keys = [fill_key(i) for i in range(n)]
        random.Random(os.getpid()).shuffle(keys)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

        def produce(k: str, wait: bool) -> bool:
            writer = store.claim(stage, k, wait=wait)
            if writer is None:
                return False
            with writer:
                os.write(log_fd, f"{k} {os.getpid()}\n".encode())
                writer.save_bytes("data.bin", fill_payload(k))
                writer.save_json("info.json", {"key": k})
                time.sleep(0.02)  # widen the window in which others find the lock held
            return True

        deferred = [k for k in keys if not produce(k, wait=False)]
        for k in deferred:  # the ones others were busy with: wait, then normally find them DONE
            produce(k, wait=True)
        os.close(log_fd)
        return 0

    print(f"unknown mode {mode!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
