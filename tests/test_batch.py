"""Batch jobs: several processes on one cache split a movie's shots, each artifact made once.

Each worker is a real process (tests/cache_workers/pipeline_worker.py) running `generate` over the
fake pipeline (real runner, cache, locks and keys; fake compute), as a shell loop or a Slurm array
runs `mdream generate` on every task.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import small_script_dict, write_script

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL and flock")

TESTS = Path(__file__).resolve().parent
WORKER = TESTS / "cache_workers" / "pipeline_worker.py"
STAGES = ("encode", "keyframes", "render")


def _start(script: Path, movie: Path, cache: Path, log: Path, go: Path, sleep: float) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(WORKER), str(script), str(movie), str(cache), str(log), str(go),
                             str(sleep)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _productions(log: Path) -> list[tuple[str, str, str]]:
    return [tuple(line.split()) for line in log.read_text().splitlines()]  # (stage, shot, pid)


@pytest.mark.timeout(180)
def test_two_workers_split_a_movie_and_make_each_artifact_once(tmp_path):
    n_shots = 8
    script = write_script(tmp_path / "movie", small_script_dict(n_shots=n_shots))
    log, go, cache = tmp_path / "log.txt", tmp_path / "go", tmp_path / "cache"
    procs = [_start(script, tmp_path / f"out{w}" / "movie.mp4", cache, log, go, sleep=0.15) for w in range(2)]
    time.sleep(0.5)
    go.write_text("go")
    summaries = []
    for proc in procs:
        out, err = proc.communicate(timeout=150)
        assert proc.returncode == 0, err
        summaries.append(out.split())

    made = _productions(log)
    per_artifact = collections.Counter((stage, shot) for stage, shot, _ in made)
    shots = {shot for _, shot in per_artifact}
    assert len(shots) == n_shots
    assert set(per_artifact) == {(stage, shot) for stage in STAGES for shot in shots}
    assert all(count == 1 for count in per_artifact.values()), per_artifact  # nothing made twice
    pids = collections.Counter(pid for stage, _, pid in made if stage == "encode")
    assert len(pids) == 2, pids  # both workers did part of the parallel stage
    # each worker's report accounts for every shot: made by it, or by the other process
    for summary in summaries:
        counts = dict(item.split(":") for item in summary)
        for stage in STAGES:
            produced, reused, other = map(int, counts[stage].split("/"))
            assert produced + reused + other == n_shots, (stage, counts)
    for w in range(2):  # both movie folders and movies were written
        assert (tmp_path / f"out{w}" / "movie.mp4").is_file()
        assert len(list((tmp_path / f"out{w}" / "movie" / "keyframes").glob("*.png"))) == n_shots


@pytest.mark.slow  # three worker processes, each importing torch: ~20 s on a busy machine
@pytest.mark.timeout(180)
def test_a_killed_worker_s_claims_are_taken_over_and_a_rerun_makes_nothing(tmp_path):
    n_shots = 6
    script = write_script(tmp_path / "movie", small_script_dict(n_shots=n_shots))
    log, go, cache = tmp_path / "log.txt", tmp_path / "go", tmp_path / "cache"
    victim = _start(script, tmp_path / "a" / "movie.mp4", cache, log, go, sleep=0.2)
    survivor = _start(script, tmp_path / "b" / "movie.mp4", cache, log, go, sleep=0.2)
    time.sleep(0.5)
    go.write_text("go")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the victim has made something and is holding its next claim
        if log.exists() and any(pid == str(victim.pid) for _, _, pid in _productions(log)):
            break
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    out, err = survivor.communicate(timeout=150)
    assert survivor.returncode == 0, err

    per_artifact = collections.Counter((stage, shot) for stage, shot, _ in _productions(log))
    assert len(per_artifact) == len(STAGES) * n_shots  # the survivor finished everything
    # Only what the victim was producing when it died may have been made a second time (its claim
    # was freed by the kernel; the half-made artifact was never published).
    assert sum(per_artifact.values()) - len(per_artifact) <= 1, per_artifact

    rerun_log = tmp_path / "rerun.txt"
    again = _start(script, tmp_path / "b" / "movie.mp4", cache, rerun_log, go, sleep=0.0)
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert not rerun_log.exists()  # every artifact was valid: nothing made again
