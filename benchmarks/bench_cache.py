"""Artifact store throughput: publish and verified-open of small tensor artifacts, and status.

    python -m benchmarks.bench_cache
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from benchmarks.results import update_section
from mdream.cache import ArtifactStore, artifact_key


def main(n: int = 300) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = ArtifactStore(Path(tmp))
        keys = [artifact_key("encode", "1", "b", {"i": i}, 0, []) for i in range(n)]
        tensor = {"tokens": torch.randn(2, 1024)}  # 8 KiB: a full-size shot's keyframe tokens

        t0 = time.perf_counter()
        for k in keys:
            with store.claim("encode", k) as w:
                w.save_tensors("tokens", tensor)
        publish = (time.perf_counter() - t0) / n

        t0 = time.perf_counter()
        for k in keys:
            store.status("encode", k)
        status = (time.perf_counter() - t0) / n

        t0 = time.perf_counter()
        for k in keys:
            store.open("encode", k).load_tensors("tokens")
        read = (time.perf_counter() - t0) / n

    body = (
        "| operation (8 KiB tensor artifact) | ms per artifact |\n|---|---|\n"
        f"| claim + write + fsync + atomic publish | {publish * 1e3:.2f} |\n"
        f"| status (sizes only) | {status * 1e3:.3f} |\n"
        f"| open (full sha256 verify) + load | {read * 1e3:.2f} |\n"
    )
    update_section("Artifact cache", body, "python -m benchmarks.bench_cache")
    print(body)


if __name__ == "__main__":
    main()
