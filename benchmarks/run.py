"""`make bench`: run every benchmark; each writes its own section of benchmarks/RESULTS.md."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = [
    "benchmarks.bench_cache",
    "benchmarks.bench_toyworld",
    "benchmarks.eval_baselines",
    "benchmarks.bench_storyboard",
]


def main() -> None:
    failed = []
    for module in BENCHMARKS:
        print(f"== {module}", flush=True)
        if subprocess.call([sys.executable, "-m", module]) != 0:
            failed.append(module)
    if failed:
        sys.exit(f"benchmarks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
