"""The stage runner and `mdream status`: reuse, invalidation, kill-and-resume, several processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import small_script_dict, write_script
from pipeline_fakes import FakeEncode, FakeKeyframes

from mdream.stages.options import RunOptions
from mdream.stages.pipeline import Project, run_stage
from mdream.stages.status import script_status

TESTS = Path(__file__).parent


def _run(script: Path, *stages, **opts):
    project = Project.open(script, RunOptions(quiet=True, **opts))
    stages = list(stages)
    return [run_stage(project, s, stages[: i + 1]) for i, s in enumerate(stages)]


def _states(script: Path, stages, stage: str) -> list[str]:
    report = script_status(script, RunOptions(), stages=stages)
    return [r.states[stage] for r in report.rows]


def test_rerun_reuses_everything(small_script):
    first = _run(small_script, FakeEncode(), FakeKeyframes())
    assert [len(r.produced) for r in first] == [6, 6]
    second = _run(small_script, FakeEncode(), FakeKeyframes())
    assert [len(r.produced) for r in second] == [0, 0]
    assert [len(r.reused) for r in second] == [6, 6]


def test_chained_values_flow_through_the_cache(small_script):
    _run(small_script, FakeEncode(), FakeKeyframes())
    project = Project.open(small_script, RunOptions(quiet=True))
    from mdream.stages.pipeline import plan_keys

    keys = plan_keys(project, [FakeEncode(), FakeKeyframes()])
    values = [project.store.open("keyframes", k).load_tensors("tokens")["x"][0].item() for k in keys["keyframes"]]
    assert values == [sum(range(i + 1)) for i in range(6)]  # cumulative sums of the shot indices


def test_editing_one_shot_invalidates_it_and_for_chained_stages_the_ones_after(small_script):
    stages = [FakeEncode(), FakeKeyframes()]
    _run(small_script, *stages)
    data = small_script_dict()
    data["arcs"][0]["shots"][3]["descriptor"] = "An edited description."
    small_script.write_text(yaml.safe_dump(data, sort_keys=False))
    assert _states(small_script, stages, "encode") == ["done"] * 3 + ["stale"] + ["done"] * 2
    assert _states(small_script, stages, "keyframes") == ["done"] * 3 + ["stale"] * 3
    reports = _run(small_script, *stages)
    assert reports[0].produced == ["act1-004"]
    assert reports[1].produced == ["act1-004", "act1-005", "act1-006"]


def test_force_and_from_stage(small_script):
    stages = [FakeEncode(), FakeKeyframes()]
    _run(small_script, *stages)
    assert [len(r.produced) for r in _run(small_script, *stages, from_stage="keyframes")] == [0, 6]
    assert [len(r.produced) for r in _run(small_script, *stages, force=True)] == [6, 6]


def test_seed_changes_keys(small_script):
    stages = [FakeEncode()]
    _run(small_script, *stages)
    assert set(_states(small_script, stages, "encode")) == {"done"}
    assert [len(r.produced) for r in _run(small_script, *stages, seed=123)] == [6]


WORKER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from pipeline_fakes import FakeEncode
    from mdream.stages.options import RunOptions
    from mdream.stages.pipeline import Project, run_stage
    project = Project.open({script!r}, RunOptions(quiet=True))
    stage = FakeEncode(sleep={sleep}, log={log!r})
    run_stage(project, stage, [stage])
    """
)


def _worker(script: Path, log: Path, sleep: float) -> subprocess.Popen:
    code = WORKER.format(tests=str(TESTS), script=str(script), sleep=sleep, log=str(log))
    return subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_status_is_truthful_after_a_killed_run_and_the_rerun_resumes(tmp_path):
    data = small_script_dict(n_shots=12)
    script = write_script(tmp_path / "movie", data)
    log = tmp_path / "log.txt"
    proc = _worker(script, log, sleep=0.4)
    deadline = time.time() + 60
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    produced_before = len(log.read_text().splitlines())
    assert 3 <= produced_before < 12
    states = _states(script, [FakeEncode()], "encode")
    # Every shot the killed run logged is done (it logs after writing but before publishing, so
    # the last one may have died unpublished); nothing is corrupt or left "running".
    assert set(states) <= {"done", "missing"}
    assert produced_before - 1 <= states.count("done") <= produced_before
    assert states[: states.count("done")] == ["done"] * states.count("done")
    # The rerun only does what is missing, and its results are all valid.
    reports = _run(script, FakeEncode())
    assert len(reports[0].produced) == states.count("missing")
    assert _states(script, [FakeEncode()], "encode") == ["done"] * 12
    project = Project.open(script, RunOptions(quiet=True))
    from mdream.stages.pipeline import plan_keys

    keys = plan_keys(project, [FakeEncode()])["encode"]
    for i, k in enumerate(keys):
        assert torch.equal(project.store.open("encode", k).load_tensors("emb")["x"], torch.full((4,), float(i)))


def test_two_processes_share_the_work_without_duplicates(tmp_path):
    script = write_script(tmp_path / "movie", small_script_dict(n_shots=12))
    log = tmp_path / "log.txt"
    procs = [_worker(script, log, sleep=0.5) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    lines = log.read_text().splitlines()
    shot_ids = [line.split()[1] for line in lines]
    assert sorted(shot_ids) == sorted(set(shot_ids)) and len(shot_ids) == 12  # each shot once
    assert len({line.split()[0] for line in lines}) == 2  # both processes did some of the work
    assert _states(script, [FakeEncode()], "encode") == ["done"] * 12


def test_a_corrupt_artifact_is_reported_then_recomputed_not_used(small_script):
    _run(small_script, FakeEncode())
    project = Project.open(small_script, RunOptions(quiet=True))
    from mdream.stages.pipeline import plan_keys

    key = plan_keys(project, [FakeEncode()])["encode"][2]
    emb = next(project.store.artifact_dir("encode", key).glob("emb*"))
    emb.write_bytes(emb.read_bytes()[:-7])  # truncated
    assert _states(small_script, [FakeEncode()], "encode")[2] == "corrupt"
    reports = _run(small_script, FakeEncode())
    assert reports[0].produced == ["act1-003"]
    assert project.store.open("encode", key).load_tensors(emb.name)["x"][0].item() == 2.0


def test_batched_stage_batches_and_a_failed_batch_publishes_nothing(small_script):
    from pipeline_fakes import BatchedEncode

    stage = BatchedEncode(fail_on="act1-006")
    project = Project.open(small_script, RunOptions(quiet=True))
    try:
        run_stage(project, stage, [stage])
    except RuntimeError:
        pass
    assert stage.batches == [4, 2]
    assert _states(small_script, [BatchedEncode()], "encode") == ["done"] * 4 + ["missing"] * 2
    ok = BatchedEncode()
    report = run_stage(project, ok, [ok])
    assert ok.batches == [2] and report.produced == ["act1-005", "act1-006"]


def test_ctrl_c_while_a_batch_is_being_claimed_leaves_no_temp_folder_or_lock(small_script, monkeypatch):
    from pipeline_fakes import BatchedEncode

    from mdream.cache import ArtifactStore

    stage = BatchedEncode()
    project = Project.open(small_script, RunOptions(quiet=True))
    claim, calls = ArtifactStore.claim, []

    def claim_then_interrupt(self, *args, **kwargs):  # Ctrl-C while claiming the batch's third shot
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return claim(self, *args, **kwargs)

    monkeypatch.setattr(ArtifactStore, "claim", claim_then_interrupt)
    with pytest.raises(KeyboardInterrupt) as raised:
        run_stage(project, stage, [stage])
    # checked while the traceback still holds the runner's frames: no writer left for the garbage collector to abort
    assert raised.traceback and stage.batches == [] and not list(project.store.iter_leftovers())
    monkeypatch.setattr(ArtifactStore, "claim", claim)
    report = run_stage(project, BatchedEncode(), [BatchedEncode()])
    assert len(report.produced) == 6  # the two claimed shots' locks were released


def test_identical_shots_are_separate_samples(tmp_path):
    data = small_script_dict()
    shots = data["arcs"][0]["shots"]
    shots[1] = dict(shots[0])  # same scene, cast, texts, camera and duration; another id
    script = write_script(tmp_path / "movie", data)
    (report,) = _run(script, FakeEncode())
    assert len(report.produced) == 6 and not report.by_other_process


def _artifact_dir(script: Path, stages, stage: str, index: int) -> Path:
    from mdream.stages.pipeline import plan_keys

    project = Project.open(script, RunOptions(quiet=True))
    return project.store.artifact_dir(stage, plan_keys(project, stages)[stage][index])


def test_a_chained_stage_sees_its_whole_history_and_a_rerun_rebuilds_it(small_script):
    from pipeline_fakes import FakeChained

    first = FakeChained()
    _run(small_script, FakeEncode(), first)
    assert first.seen == {f"act1-00{i + 1}": [10.0 * j for j in range(i)] for i in range(6)}
    # A middle artifact deleted, another corrupted: the rerun recomputes both, in order, and each
    # sees every earlier shot (the recomputed one included), never a history with a hole.
    import shutil

    stages = [FakeEncode(), FakeChained()]
    shutil.rmtree(_artifact_dir(small_script, stages, "keyframes", 2))
    tokens = next(_artifact_dir(small_script, stages, "keyframes", 4).glob("tokens*"))
    tokens.write_bytes(tokens.read_bytes()[:-3])
    again = FakeChained()
    reports = _run(small_script, FakeEncode(), again)
    assert reports[1].produced == ["act1-003", "act1-005"]
    assert again.seen == {"act1-003": [0.0, 10.0], "act1-005": [0.0, 10.0, 20.0, 30.0]}


def test_a_missing_predecessor_is_an_error_not_a_shorter_history(small_script):
    import shutil

    import pytest
    from pipeline_fakes import FakeChained

    from mdream.errors import MdreamError
    from mdream.stages.pipeline import _upstream_artifacts, plan_keys

    stages = [FakeEncode(), FakeChained()]
    _run(small_script, *stages)
    shutil.rmtree(_artifact_dir(small_script, stages, "keyframes", 1))
    project = Project.open(small_script, RunOptions(quiet=True))
    keys = plan_keys(project, stages)
    with pytest.raises(MdreamError, match="act1-002"):  # shot 3's previous shot
        _upstream_artifacts(project, stages[1], project.plan.shots[2], keys)
    upstream = _upstream_artifacts(project, stages[1], project.plan.shots[4], keys)
    assert len(upstream["history"]) == 4 and upstream["history"][0].key == keys["keyframes"][0]
    with pytest.raises(MdreamError, match="act1-002"):
        list(upstream["history"])
