"""Write one section of benchmarks/RESULTS.md (each benchmark owns the section under its title)."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    """A one-line description of the machine the numbers come from."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
        cpu = model
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    threads = torch.get_num_threads()
    return f"{cpu}, {os.cpu_count()} cores ({threads} torch threads), {gpu}, torch {torch.__version__}"


def git_revision() -> str:
    # a copy of the tree without .git (e.g. on a lent GPU machine) is told its revision through the environment
    if os.environ.get("MDREAM_GIT_REVISION"):
        return os.environ["MDREAM_GIT_REVISION"]
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True, cwd=RESULTS.parent).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def update_section(title: str, body: str, command: str) -> None:
    """Replace (or append) the ``## title`` section of RESULTS.md with ``body``."""
    stamp = f"_Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC at {git_revision()} on {machine()}._\n\nCommand: `{command}`\n\n"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark and evaluation results\n"
    section = f"## {title}\n\n{stamp}{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text, count=1)
    else:
        text = text.rstrip() + "\n\n" + section
    RESULTS.write_text(text.rstrip() + "\n")
