"""The stage runner: one loop that every per-shot stage plugs into.

A :class:`Stage` says what a shot's artifact depends on (its inputs, the components it uses, its
upstream stages) and how to produce it. :func:`run_stage` does the rest, the same way for every
stage: compute content keys, reuse valid cached artifacts, claim the missing ones one artifact
lock at a time (so several processes, one per GPU or machine, can fill one cache), skip shots that
another process is producing and come back to them at the end, and record a run manifest.

Keys (``docs/architecture.md``): ``key(stage, shot) = hash(stage name, stage version, identity of
the components it uses, the shot's inputs, seed, upstream keys)``. Upstream keys are the same
shot's keys in the upstream stages, plus, for a *chained* stage (the autoregressive keyframes),
the previous shot's key in that stage, so an edit invalidates that shot and the ones after it.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mdream.cache import Artifact, ArtifactStatus, ArtifactStore, ArtifactWriter, artifact_key
from mdream.errors import InputError, MdreamError
from mdream.models.bundle import ModelBundle
from mdream.script import Plan, PlannedShot, Script, load_script, plan_script
from mdream.stages.options import RunOptions, resolve_cache_dir


@dataclass
class Project:
    """A loaded script with everything a stage runs against: plan, cache, model bundle, seed."""

    script_path: Path
    script: Script
    plan: Plan
    store: ArtifactStore
    bundle: ModelBundle
    seed: int
    options: RunOptions

    @classmethod
    def open(cls, script_path: str | Path, options: RunOptions | None = None) -> Project:
        options = options or RunOptions()
        script_path = Path(script_path)
        script = load_script(script_path)  # raises ScriptError (exit 2) with every problem
        plan = plan_script(script)
        cache_dir = resolve_cache_dir(script_path, options.cache_dir)
        if cache_dir.exists() and not cache_dir.is_dir():
            raise InputError(f"The cache folder {cache_dir} exists and is not a folder.", hint="pass another --cache-dir")
        bundle = ModelBundle.load(script.output.model_bundle, base_dir=script_path.resolve().parent)
        seed = options.seed if options.seed is not None else script.seed
        return cls(script_path.resolve(), script, plan, ArtifactStore(cache_dir), bundle, seed, options)

    def shot_seed(self, stage: str, shot: PlannedShot) -> int:
        """A per-shot seed that does not move when other shots are inserted or removed."""
        digest = hashlib.sha256(f"{self.seed}:{stage}:{shot.id}".encode()).digest()
        return int.from_bytes(digest[:4], "little")


class Stage:
    """One per-shot stage. Subclasses set the class attributes and implement :meth:`produce`."""

    name: str = ""
    version: str = "1"
    #: bundle components whose identity enters the key
    components: tuple[str, ...] = ()
    #: stages whose same-shot artifacts this stage reads
    upstream_stages: tuple[str, ...] = ()
    #: each shot also depends on the previous shot's artifact of this stage (autoregressive)
    chained: bool = False
    #: shots produced together by produce_batch (a chained stage needs 1: each shot reads the last)
    batch_size: int = 1

    def shot_inputs(self, project: Project, shot: PlannedShot) -> dict[str, Any]:
        """The script fields this stage's artifact for ``shot`` depends on."""
        return shot.inputs_for_cache()

    def prepare(self, project: Project) -> None:
        """Load models once before the loop (raise NotBuiltError when a component is missing)."""

    def produce(self, project: Project, shot: PlannedShot, upstream: dict[str, Artifact], writer: ArtifactWriter) -> None:
        """Write ``shot``'s artifact files into ``writer`` (``upstream``: stage name -> artifact)."""
        raise NotImplementedError

    def produce_batch(
        self,
        project: Project,
        shots: list[PlannedShot],
        upstreams: list[dict[str, Artifact]],
        writers: list[ArtifactWriter],
    ) -> None:
        """Several shots at once (up to ``batch_size``); by default one after the other."""
        for shot, upstream, writer in zip(shots, upstreams, writers, strict=True):
            self.produce(project, shot, upstream, writer)


def plan_keys(project: Project, stages: Sequence[Stage]) -> dict[str, list[str]]:
    """Every stage's key for every shot, in plan order (stages must be in pipeline order)."""
    keys: dict[str, list[str]] = {}
    for stage in stages:
        bundle_id = project.bundle.identity(stage.components)
        stage_keys: list[str] = []
        for shot in project.plan.shots:
            upstream = [keys[s][shot.index] for s in stage.upstream_stages]
            if stage.chained and shot.index > 0:
                upstream.append(stage_keys[shot.index - 1])
            stage_keys.append(
                artifact_key(
                    stage=stage.name,
                    stage_version=stage.version,
                    bundle_id=bundle_id,
                    inputs=stage.shot_inputs(project, shot),
                    # the shot's own seed (derived from the script seed and the shot id): two
                    # shots with identical text are still two samples, not one shared artifact
                    seed=project.shot_seed(stage.name, shot),
                    upstream=upstream,
                )
            )
        keys[stage.name] = stage_keys
    return keys


@dataclass
class StageReport:
    """What one run of a stage did, per shot."""

    stage: str
    produced: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    by_other_process: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "produced": self.produced,
            "reused": self.reused,
            "by_other_process": self.by_other_process,
            "seconds": round(self.seconds, 3),
        }


def _upstream_artifacts(project: Project, stage: Stage, shot: PlannedShot, keys: dict[str, list[str]]) -> dict[str, Artifact]:
    found: dict[str, Artifact] = {}
    for up in stage.upstream_stages:
        art = project.store.open(up, keys[up][shot.index])
        if art is None:
            raise MdreamError(
                f"Stage {stage.name!r} needs the {up!r} artifact of shot {shot.id!r}, which is missing or corrupt.",
                hint=f"run `mdream {up} {project.script_path}` first (or `mdream generate`, which runs every stage)",
            )
        found[up] = art
    if stage.chained and shot.index > 0:
        prev = project.plan.shots[shot.index - 1]
        art = project.store.open(stage.name, keys[stage.name][prev.index])
        if art is not None:
            found["previous"] = art
    return found


def run_stage(project: Project, stage: Stage, stages: Sequence[Stage]) -> StageReport:
    """Produce ``stage``'s artifact for every shot of the plan that lacks a valid one.

    ``stages`` is the whole pipeline up to and including ``stage`` (for upstream keys).
    """
    start = time.perf_counter()
    keys = plan_keys(project, stages)
    store, report = project.store, StageReport(stage.name)
    force = project.options.forces(stage.name)
    todo: list[PlannedShot] = []
    for shot in project.plan.shots:
        if not force and store.open(stage.name, keys[stage.name][shot.index]) is not None:
            report.reused.append(shot.id)
        else:
            todo.append(shot)
    if todo:
        stage.prepare(project)
    deferred: list[PlannedShot] = []
    with Progress(
        TextColumn(f"[bold]{stage.name}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        disable=project.options.quiet,
        transient=False,
    ) as progress:
        task = progress.add_task("", total=len(project.plan.shots), completed=len(report.reused))
        batch: list[tuple[PlannedShot, ArtifactWriter]] = []

        def flush() -> None:
            if batch:
                progress.update(task, description=", ".join(shot.id for shot, _ in batch))
                _fill_batch(project, stage, batch, keys)
                report.produced.extend(shot.id for shot, _ in batch)
                progress.advance(task, len(batch))
                batch.clear()

        # First pass: take what nobody else is producing. A chained stage must go in order, so
        # it waits for each lock instead of skipping ahead. Second pass: wait for the shots
        # other processes were producing (they are usually done by then).
        for shots, wait in ((todo, stage.chained), (deferred, True)):
            for shot in shots:
                # claim() returns None when another live process holds the lock (wait=False) or
                # when the artifact turned out DONE once the lock was ours.
                writer = store.claim(stage.name, keys[stage.name][shot.index], wait=wait, force=force)
                if writer is None:
                    if wait or store.status(stage.name, keys[stage.name][shot.index]) == ArtifactStatus.DONE:
                        report.by_other_process.append(shot.id)
                        progress.advance(task)
                    else:
                        deferred.append(shot)
                    continue
                batch.append((shot, writer))
                if len(batch) >= stage.batch_size:
                    flush()
            flush()
    report.seconds = time.perf_counter() - start
    _record_run(project, stage, keys, report)
    return report


def _fill_batch(
    project: Project, stage: Stage, batch: list[tuple[PlannedShot, ArtifactWriter]], keys: dict[str, list[str]]
) -> None:
    """Produce a batch of claimed artifacts; all are published together, or none on error."""
    with contextlib.ExitStack() as stack:
        for _, writer in batch:
            stack.enter_context(writer)  # commits on a clean exit, aborts (publishes nothing) on error
        shots = [shot for shot, _ in batch]
        for shot, writer in batch:
            writer.metadata.update(
                {
                    "stage": stage.name,
                    "script": str(project.script_path),
                    "shot_id": shot.id,
                    "shot_index": shot.index,
                    "seed": project.shot_seed(stage.name, shot),
                    "host": socket.gethostname(),
                }
            )
        upstreams = [_upstream_artifacts(project, stage, shot, keys) for shot in shots]
        stage.produce_batch(project, shots, upstreams, [writer for _, writer in batch])


def _record_run(project: Project, stage: Stage, keys: dict[str, list[str]], report: StageReport) -> None:
    name = "run-" + hashlib.sha256(str(project.script_path).encode()).hexdigest()[:16]
    manifest = project.store.read_manifest(name) or {"script": str(project.script_path), "stages": {}}
    manifest["title"] = project.plan.title
    manifest["shots"] = [s.id for s in project.plan.shots]
    manifest["stages"][stage.name] = {
        "keys": {s.id: keys[stage.name][s.index] for s in project.plan.shots},
        "report": report.to_dict(),
        "finished": time.time(),
    }
    project.store.write_manifest(name, manifest)
