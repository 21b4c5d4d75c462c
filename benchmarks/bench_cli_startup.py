"""CLI startup: wall time of light commands, each in a fresh interpreter (heavy libraries load only in
the commands that need them; tests/test_cli_startup.py checks which modules get imported).

    python -m benchmarks.bench_cli_startup
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.results import update_section

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = "examples/scripts/short.yaml"

COMMANDS = {
    "`python -c pass` (interpreter alone)": [sys.executable, "-c", "pass"],
    "`mdream --help`": [sys.executable, "-m", "mdream", "--help"],
    f"`mdream script-validate {EXAMPLE}`": [sys.executable, "-m", "mdream", "script-validate", EXAMPLE],
    "`mdream script-schema`": [sys.executable, "-m", "mdream", "script-schema"],
    "`python -c 'import torch'` (for scale)": [sys.executable, "-c", "import torch"],
}


def wall_times(command: list[str], runs: int) -> list[float]:
    """Seconds per run, after one unmeasured run that warms the file-system cache."""
    subprocess.run(command, cwd=ROOT, capture_output=True, check=True)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(command, cwd=ROOT, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return times


def main(runs: int = 7) -> None:
    rows = []
    load_before = os.getloadavg()[0]
    for label, command in COMMANDS.items():
        times = wall_times(command, runs)
        rows.append(f"| {label} | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} |")
    load = f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    body = (
        f"Wall seconds per command, {runs} runs each in a fresh interpreter (one warm-up run first); "
        f"1-minute load average {load} (other processes on the cores slow every row alike).\n\n"
        "| command | median | min | max |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    update_section("CLI startup", body, "python -m benchmarks.bench_cli_startup")
    print(body)


if __name__ == "__main__":
    main()
