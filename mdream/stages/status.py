"""``mdream status``: per stage and shot, is the cached artifact done, stale or missing?

* done: a complete artifact exists under the shot's *current* key;
* running: another live process holds that artifact's lock right now;
* corrupt: an artifact is there but fails its sizes or, for files under QUICK_HASH_BYTES, its
  checksums (``verify``: the checksums of every file);
* stale: no artifact under the current key, but one made for this shot from older inputs
  (an edited shot, a retrained model, a changed upstream) is in the cache;
* missing: nothing yet.

Per-movie steps (the movie folder's export) get one line per target folder this script's cache
has a record for: *done* when that record is current and the files it wrote are unchanged, *stale*
otherwise; *missing* (for the default movie folder) when there is none.

Reads only meta.json files and lock states: no model is loaded. The stages come from the pipeline
definition (:mod:`mdream.stages.registry`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdream.cache import ArtifactStatus
from mdream.stages.options import RunOptions
from mdream.stages.pipeline import Project, Stage, movie_key, outputs_intact, plan_keys
from mdream.stages.registry import new_stages

QUICK_HASH_BYTES = 1 << 20
"""Without ``verify``, files smaller than this (1 MiB: tokens, conditioning, a keyframe PNG) are
hashed too; larger ones (clips) are checked by size only."""

_STATE = {
    ArtifactStatus.DONE: "done",
    ArtifactStatus.IN_PROGRESS: "running",
    ArtifactStatus.CORRUPT: "corrupt",
    ArtifactStatus.MISSING: "missing",
}


@dataclass
class ShotStatus:
    index: int
    shot_id: str
    states: dict[str, str]
    keys: dict[str, str]


@dataclass
class StepStatus:
    """A per-movie step's state for one target folder."""

    step: str
    target: str
    state: str
    key: str


@dataclass
class ScriptStatus:
    """The status table of one script against one cache."""

    title: str
    script: Path
    cache_dir: Path
    stages: list[str]
    rows: list[ShotStatus] = field(default_factory=list)
    verified: bool = False
    """Every file's checksum was checked (``--verify``); else sizes, and checksums of small files."""
    steps: list[StepStatus] = field(default_factory=list)

    def totals(self) -> dict[str, dict[str, int]]:
        return {s: dict(Counter(r.states[s] for r in self.rows)) for s in self.stages}

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "script": str(self.script),
            "cache_dir": str(self.cache_dir),
            "stages": self.stages,
            "verified": self.verified,
            "totals": self.totals(),
            "shots": [
                {"index": r.index, "id": r.shot_id, "states": r.states, "keys": r.keys} for r in self.rows
            ],
            "steps": [{"step": s.step, "target": s.target, "state": s.state, "key": s.key} for s in self.steps],
        }


def _shots_with_artifacts(project: Project, stage: str) -> set[str]:
    """Shot ids of this script that have some complete-looking artifact in ``stage`` (any key)."""
    found: set[str] = set()
    script = str(project.script_path)
    for _stage, key in project.store.iter_artifacts(stage):
        try:
            meta = json.loads((project.store.artifact_dir(stage, key) / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        metadata = meta.get("metadata") or {}
        if metadata.get("script") == script and "shot_id" in metadata:
            found.add(metadata["shot_id"])
    return found


def script_status(
    script_path: str | Path,
    options: RunOptions | None = None,
    stages: list[Stage] | None = None,
    verify: bool = False,
) -> ScriptStatus:
    """The status of every stage's artifact for every shot (``verify`` hashes every file)."""
    project = Project.open(script_path, options)
    stages = stages if stages is not None else new_stages()
    keys = plan_keys(project, stages)
    shot_stages = [s for s in stages if not s.per_movie]
    report = ScriptStatus(
        title=project.plan.title,
        script=project.script_path,
        cache_dir=project.store.root,
        stages=[s.name for s in shot_stages],
        verified=verify,
    )
    older = {s.name: _shots_with_artifacts(project, s.name) for s in shot_stages}
    for shot in project.plan.shots:
        states, shot_keys = {}, {}
        for stage in shot_stages:
            key = keys[stage.name][shot.index]
            state = _STATE[project.store.status(stage.name, key, checksums=verify, hash_below=QUICK_HASH_BYTES)]
            if state == "missing" and shot.id in older[stage.name]:
                state = "stale"
            states[stage.name], shot_keys[stage.name] = state, key
        report.rows.append(ShotStatus(shot.index, shot.id, states, shot_keys))
    for step in stages:
        if step.per_movie:
            report.steps.extend(_step_status(project, step, keys))
    return report


def _step_status(project: Project, step: Stage, keys: dict[str, list[str]]) -> list[StepStatus]:
    """One line per target folder recorded for this script (the default movie folder when none is)."""
    targets: list[str] = []
    script = str(project.script_path)
    for _stage, key in project.store.iter_artifacts(step.name):
        try:
            meta = json.loads((project.store.artifact_dir(step.name, key) / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        metadata = meta.get("metadata") or {}
        if metadata.get("script") == script and isinstance(metadata.get("target"), str):
            if metadata["target"] not in targets:
                targets.append(metadata["target"])
    lines = []
    for target in sorted(targets) or [str(project.movie_dir)]:
        project.movie_dir = Path(target)
        key = movie_key(project, step, keys)
        art = project.store.open(step.name, key)
        if art is not None:
            state = "done" if outputs_intact(art) else "stale"
        else:
            state = "stale" if targets else "missing"
        lines.append(StepStatus(step.name, target, state, key))
    return lines
