"""Toy-world dataset throughput: 10,000 shots written to disk in shards (target: under 1 minute on 2 cores).

    python -m benchmarks.bench_toyworld
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.results import update_section
from mdream.toyworld.dataset import write_dataset


def main() -> None:
    rows = []
    for size in (32, 64):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            info = write_dataset(Path(tmp) / "ds", episodes=200, shots_per_episode=50, size=size, seed=0, progress=False)
            seconds = time.perf_counter() - t0
            mb = sum(p.stat().st_size for p in (Path(tmp) / "ds").iterdir()) / 2**20
        n = 200 * 50
        rows.append(f"| {size}x{size} | {n:,} | {seconds:.1f} | {n / seconds:,.0f} | {mb:.0f} |")
        del info
    body = (
        "`write_dataset(episodes=200, shots_per_episode=50)`: keyframes + labels + texts, 1,000-row shards, "
        "2 worker processes.\n\n| size | shots | seconds | shots/s | MB on disk |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
    )
    update_section("Toy world dataset throughput", body, "python -m benchmarks.bench_toyworld")
    print(body)


if __name__ == "__main__":
    main()
