"""The stage runner: one loop that every step of the pipeline plugs into.

A :class:`Stage` says what a shot's artifact depends on (its inputs, the components it uses, its
upstream stages) and how to produce it. :func:`run_stage` does the rest, the same way for every
stage: compute content keys, reuse valid cached artifacts, claim the missing ones one artifact
lock at a time (so several processes, one per GPU or machine, can fill one cache), skip shots that
another process is producing and come back to them at the end, and record a run manifest.

A :class:`MovieStep` is a per-movie step (the movie folder's export): one artifact per movie, whose
key derives from every upstream key, the output settings and the target folder. It records what it
wrote (sizes and modification times), and is rerun when its key changes or an output it wrote is
missing or was changed since.

Keys (``docs/architecture.md``): ``key(stage, shot) = hash(stage name, stage version, identity of
the components it uses, the shot's inputs, seed, upstream keys)``. Upstream keys are the same
shot's keys in the upstream stages, plus, for a *chained* stage (the autoregressive keyframes),
the previous shot's key in that stage, so an edit invalidates that shot and the ones after it.
A chained stage's ``produce`` gets ``upstream["history"]``: every earlier shot's artifact of that
stage, in order, opened on first access; a missing or corrupt one raises an error, never vanishes.

The pipeline's order and its stages come from :mod:`mdream.stages.registry`.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from mdream.errors import InputError, MdreamError
from mdream.stages.options import RunOptions, resolve_cache_dir

if TYPE_CHECKING:
    from mdream.cache import Artifact, ArtifactStore, ArtifactWriter
    from mdream.models.bundle import ModelBundle
    from mdream.script import Plan, PlannedShot, Script


@dataclass
class Project:
    """A loaded script with everything a stage runs against: plan, cache, model bundle, seed.

    ``movie_dir`` is the folder the per-movie steps write (``SCRIPT_NAME.movie/`` beside the script
    unless a command names another).
    """

    script_path: Path
    script: Script
    plan: Plan
    store: ArtifactStore
    bundle: ModelBundle
    seed: int
    options: RunOptions
    movie_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.movie_dir is None:
            from mdream.stages.movie import default_movie_dir

            self.movie_dir = default_movie_dir(self.script_path)

    @classmethod
    def open(cls, script_path: str | Path, options: RunOptions | None = None, movie_dir: Path | None = None) -> Project:
        from mdream.cache import ArtifactStore
        from mdream.models.bundle import ModelBundle
        from mdream.script import load_script, plan_script

        options = options or RunOptions()
        script_path = Path(script_path)
        script = load_script(script_path)  # raises ScriptError (exit 2) with every problem
        plan = plan_script(script)
        cache_dir = resolve_cache_dir(script_path, options.cache_dir)
        if cache_dir.exists() and not cache_dir.is_dir():
            raise InputError(f"The cache folder {cache_dir} exists and is not a folder.", hint="pass another --cache-dir")
        bundle = ModelBundle.load(script.output.model_bundle, base_dir=script_path.resolve().parent)
        seed = options.seed if options.seed is not None else script.seed
        movie_dir = Path(movie_dir).expanduser().resolve() if movie_dir is not None else None
        return cls(script_path.resolve(), script, plan, ArtifactStore(cache_dir), bundle, seed, options, movie_dir)

    def shot_seed(self, stage: str, shot: PlannedShot) -> int:
        """A per-shot seed that does not move when other shots are inserted or removed."""
        digest = hashlib.sha256(f"{self.seed}:{stage}:{shot.id}".encode()).digest()
        return int.from_bytes(digest[:4], "little")


class ArtifactSequence(Sequence):
    """One stage's artifacts for a run of shots, in plan order, each opened on first access.

    Opening verifies checksums; a missing or corrupt artifact raises :class:`MdreamError` naming the
    shot (the runner produces stages and chained shots in order, so this means another process or a
    person removed it meanwhile): it is never silently left out.
    """

    def __init__(self, project: Project, stage: str, shots: Sequence[PlannedShot], keys: Sequence[str], needed_by: str):
        self._project, self._stage, self._needed_by = project, stage, needed_by
        self._shots, self._keys = list(shots), list(keys)
        self._opened: dict[int, Artifact] = {}

    def __len__(self) -> int:
        return len(self._keys)

    @overload
    def __getitem__(self, index: int) -> Artifact: ...
    @overload
    def __getitem__(self, index: slice) -> list[Artifact]: ...
    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        if index not in self._opened:
            art = self._project.store.open(self._stage, self._keys[index])
            if art is None:
                raise _missing_upstream(self._needed_by, self._stage, self._shots[index], self._project.script_path)
            self._opened[index] = art
        return self._opened[index]

    @property
    def shots(self) -> list[PlannedShot]:
        return list(self._shots)


def _missing_upstream(needed_by: str, stage: str, shot: PlannedShot, script_path: Path) -> MdreamError:
    what = "an earlier shot's" if needed_by == stage else f"the {stage!r}"
    return MdreamError(
        f"Stage {needed_by!r} needs {what} artifact of shot {shot.id!r}, which is missing or corrupt.",
        hint=f"run `mdream {stage} {script_path}` first (or `mdream generate {script_path}`, which runs every stage); "
        "a rerun recomputes what is missing",
    )


class Stage:
    """One per-shot stage. Subclasses set the class attributes and implement :meth:`produce`.

    Register a subclass with :func:`mdream.stages.registry.register_stage` to make it part of the
    pipeline (a CLI command, a ``status`` column, a name for ``--from-stage`` / ``--until``).
    """

    name: str = ""
    version: str = "1"
    #: one line for the stage's CLI command (``mdream NAME --help``)
    help: str = ""
    #: bundle components whose identity enters the key
    components: tuple[str, ...] = ()
    #: stages whose same-shot artifacts this stage reads
    upstream_stages: tuple[str, ...] = ()
    #: each shot also depends on every earlier shot's artifact of this stage (autoregressive):
    #: ``produce`` gets ``upstream["history"]`` (all earlier shots, in order) and ``upstream["previous"]``
    chained: bool = False
    #: shots produced together by produce_batch (a chained stage needs 1: each shot reads the last)
    batch_size: int = 1
    #: one artifact per movie instead of per shot (see :class:`MovieStep`)
    per_movie: bool = False

    def shot_inputs(self, project: Project, shot: PlannedShot) -> dict[str, Any]:
        """The script fields this stage's artifact for ``shot`` depends on."""
        return shot.inputs_for_cache()

    def prepare(self, project: Project) -> None:
        """Load models once before the loop (raise NotBuiltError when a component is missing)."""

    def load_model(self, project: Project, component: str) -> Any:
        """Load a bundle component for this stage, on the run's device.

        With ``--offload`` a torch model stays in CPU memory and its large parts (``offload_units``) move to the
        device only while they run, one at a time across every model this stage loads
        (:mod:`mdream.models.offload`). The runner lets go of it after the stage (:meth:`prepared`).
        """
        from mdream.stages.options import resolve_device

        device = resolve_device(project.options.device)
        if not project.options.offload:
            return project.bundle.load(component, device=device)
        import torch

        from mdream.models.offload import OffloadGroup

        model = project.bundle.load(component, device="cpu")
        if isinstance(model, torch.nn.Module):
            group = self.__dict__.setdefault("_offload_group", OffloadGroup(device))
            group.add(component, model)
        return model

    @contextlib.contextmanager
    def prepared(self, project: Project):
        """The stage with its models loaded (:meth:`prepare`) for the block. Afterwards, ended or failed, every
        attribute that :meth:`prepare` and the shots set on the stage is dropped and the memory freed, so that the
        next stage loads its models into a device that holds none of this one's."""
        before = dict(vars(self))
        try:
            self.prepare(project)
            yield self
        finally:
            group = vars(self).get("_offload_group")
            if group is not None:
                group.release()
            vars(self).clear()
            vars(self).update(before)
            free_memory()

    def produce(self, project: Project, shot: PlannedShot, upstream: dict[str, Any], writer: ArtifactWriter) -> None:
        """Write ``shot``'s artifact files into ``writer``.

        ``upstream``: stage name -> that stage's artifact of this shot; for a chained stage also
        ``"history"`` (an :class:`ArtifactSequence` of every earlier shot's artifact of this stage)
        and ``"previous"`` (the last of them), absent for the first shot.
        """
        raise NotImplementedError

    def produce_batch(
        self,
        project: Project,
        shots: list[PlannedShot],
        upstreams: list[dict[str, Any]],
        writers: list[ArtifactWriter],
    ) -> None:
        """Several shots at once (up to ``batch_size``); by default one after the other."""
        for shot, upstream, writer in zip(shots, upstreams, writers, strict=True):
            self.produce(project, shot, upstream, writer)


class MovieStep(Stage):
    """A per-movie step: turns every shot's finished artifacts into outputs in ``project.movie_dir``.

    Its key derives from all its upstream stages' keys (every shot, in order), :meth:`movie_inputs`
    (the output settings and the target folder) and its version. The runner skips it when the
    cache holds its record under that key and every output the record lists is still there,
    unchanged (size and modification time); otherwise it runs again.
    """

    per_movie = True

    def movie_inputs(self, project: Project) -> dict[str, Any]:
        """What the outputs depend on besides the upstream artifacts (by default: output settings, target)."""
        return {
            "target": str(project.movie_dir),
            "output": project.plan.output.model_dump(mode="json"),
            "script": str(project.script_path),
            "title": project.plan.title,
            "shots": [s.id for s in project.plan.shots],
        }

    def produce_movie(self, project: Project, upstream: dict[str, ArtifactSequence], target: Path) -> list[Path]:
        """Write the outputs under ``target``; return every file written (the runner records them)."""
        raise NotImplementedError


def plan_keys(project: Project, stages: Sequence[Stage]) -> dict[str, list[str]]:
    """Every per-shot stage's key for every shot, in plan order (stages in pipeline order).

    A per-movie step's single key goes under its name as a one-element list.
    """
    from mdream.cache import artifact_key

    keys: dict[str, list[str]] = {}
    for stage in stages:
        if stage.per_movie:
            keys[stage.name] = [movie_key(project, stage, keys)]
            continue
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


def movie_key(project: Project, step: MovieStep, keys: dict[str, list[str]]) -> str:
    """A per-movie step's key: every upstream key (stage by stage, shot by shot), its inputs, its components."""
    from mdream.cache import artifact_key

    return artifact_key(
        stage=step.name,
        stage_version=step.version,
        bundle_id=project.bundle.identity(step.components),
        inputs=step.movie_inputs(project),
        seed=0,  # upstream keys carry the seeds
        upstream=[k for up in step.upstream_stages for k in keys[up]],
    )


@dataclass
class StageReport:
    """What one run of a stage did, per shot (a per-movie step: its target folder)."""

    stage: str
    produced: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    by_other_process: list[str] = field(default_factory=list)
    seconds: float = 0.0
    keys: dict[str, str] = field(default_factory=dict)
    """Shot id (a per-movie step: its target folder) -> the artifact's cache key."""
    outputs: list[str] = field(default_factory=list)
    """Files a per-movie step wrote outside the cache (empty for per-shot stages and when reused)."""
    peak_gpu_bytes: int | None = None
    """The most GPU memory torch held while the stage ran (a CUDA run that produced something; else None)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "produced": self.produced,
            "reused": self.reused,
            "by_other_process": self.by_other_process,
            "seconds": round(self.seconds, 3),
            "keys": self.keys,
            "outputs": self.outputs,
            "peak_gpu_bytes": self.peak_gpu_bytes,
        }


def _upstream_artifacts(project: Project, stage: Stage, shot: PlannedShot, keys: dict[str, list[str]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for up in stage.upstream_stages:
        art = project.store.open(up, keys[up][shot.index])
        if art is None:
            raise _missing_upstream(stage.name, up, shot, project.script_path)
        found[up] = art
    if stage.chained:
        earlier = project.plan.shots[: shot.index]
        # every earlier shot's upstream artifacts too, so that a stage resumed mid-movie can rebuild its context
        found["upstream_history"] = {
            up: ArtifactSequence(project, up, earlier, keys[up][: shot.index], stage.name) for up in stage.upstream_stages
        }
    if stage.chained and shot.index > 0:
        history = ArtifactSequence(project, stage.name, earlier, keys[stage.name][: shot.index], stage.name)
        found["history"] = history
        found["previous"] = history[-1]  # opened now: a missing predecessor fails before any work
    return found


def run_stage(project: Project, stage: Stage, stages: Sequence[Stage]) -> StageReport:
    """Produce ``stage``'s artifact for every shot of the plan that lacks a valid one.

    ``stages`` is the whole pipeline up to and including ``stage`` (for upstream keys).
    """
    if stage.per_movie:
        return _run_movie_step(project, stage, stages)  # type: ignore[arg-type]
    start = time.perf_counter()
    keys = plan_keys(project, stages)
    store, report = project.store, StageReport(stage.name)
    report.keys = {shot.id: keys[stage.name][shot.index] for shot in project.plan.shots}
    force = project.options.forces(stage.name)
    todo: list[PlannedShot] = []
    for shot in project.plan.shots:
        if not force and store.open(stage.name, keys[stage.name][shot.index]) is not None:
            report.reused.append(shot.id)
        else:
            todo.append(shot)
    gpu, device = _cuda_device(project) if todo else (None, None)
    if gpu is not None:
        gpu.reset_peak_memory_stats(device)
    with stage.prepared(project) if todo else contextlib.nullcontext():
        _produce_todo(project, stage, keys, report, todo, force)
    if gpu is not None:
        report.peak_gpu_bytes = int(gpu.max_memory_allocated(device))
    report.seconds = time.perf_counter() - start
    _record_run(project, stage, keys, report)
    return report


def _cuda_device(project: Project) -> tuple[Any, str | None]:
    """(``torch.cuda``, the device) when the run computes on a CUDA device (to read its peak memory), else (None,
    None)."""
    from mdream.stages.options import resolve_device

    device = resolve_device(project.options.device)
    if not device.startswith("cuda"):
        return None, None
    import torch

    return torch.cuda, device


def free_memory() -> None:
    """Collect garbage and hand cached device memory back (after a stage lets go of its models)."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _produce_todo(project: Project, stage: Stage, keys: dict[str, list[str]], report: StageReport,
                  todo: list[PlannedShot], force: bool) -> None:
    """Claim and produce every shot of ``todo`` (the runner's loop, with its progress bar; the shots already
    reused count as done)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mdream.cache import ArtifactStatus

    store = project.store
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
        try:
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
        except BaseException:  # Ctrl-C or an error while a batch is still being claimed: drop its temp folders
            for _, writer in batch:
                writer.abort()  # a no-op for the writers already committed or aborted
            raise


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


#: The record a per-movie step keeps in its artifact: every output file with its size and mtime.
OUTPUTS_RECORD = "outputs.json"


def outputs_intact(artifact: Artifact) -> bool:
    """Whether every output a per-movie step's record lists is there, unchanged since it was written."""
    try:
        record = artifact.load_json(OUTPUTS_RECORD)
        files = record["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    for path, expected in files.items():
        try:
            st = Path(path).stat()
        except OSError:
            return False
        if st.st_size != expected.get("size") or st.st_mtime_ns != expected.get("mtime_ns"):
            return False
    return True


def _run_movie_step(project: Project, step: MovieStep, stages: Sequence[Stage]) -> StageReport:
    keys = plan_keys(project, stages)

    def produce() -> list[Path]:
        upstream = {
            up: ArtifactSequence(project, up, project.plan.shots, keys[up], step.name) for up in step.upstream_stages
        }
        return step.produce_movie(project, upstream, project.movie_dir)

    report = produce_outputs(project, step.name, keys[step.name][0], str(project.movie_dir), produce,
                             force=project.options.forces(step.name))
    _record_run(project, step, keys, report)
    return report


def produce_outputs(project: Project, name: str, key: str, target: str, produce: Callable[[], list[Path]],
                    force: bool = False) -> StageReport:
    """Files written outside the cache (a movie folder, a movie file) as a cached step: skipped when the cache holds
    a record under ``key`` whose every listed file is still there, unchanged (size and mtime); otherwise
    ``produce()`` writes them and the record of what it wrote is committed (an error publishes no record, so the
    next run redoes it). Returns the step's report (``target``: what the report names)."""
    start = time.perf_counter()
    store, report = project.store, StageReport(name)
    report.keys = {target: key}
    existing = None if force else store.open(name, key)
    if existing is not None and outputs_intact(existing):
        report.reused.append(target)
    else:
        # Replace the record when it is there but its outputs are not (deleted or edited since).
        writer = store.claim(name, key, wait=True, force=force or existing is not None)
        if writer is None:  # another process finished it while we waited for the lock
            done = store.open(name, key)
            if done is not None and outputs_intact(done):
                report.by_other_process.append(target)
            else:
                writer = store.claim(name, key, wait=True, force=True)
        if writer is not None:
            with writer:  # commits on a clean exit; an error publishes no record, so the next run redoes it
                writer.metadata.update(
                    {"stage": name, "script": str(project.script_path), "target": target,
                     "host": socket.gethostname()}
                )
                files = {}
                for path in produce():
                    st = Path(path).stat()
                    files[str(Path(path).resolve())] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
                writer.save_json(OUTPUTS_RECORD, {"target": target, "files": files})
            report.produced.append(target)
            report.outputs = sorted(files)
    report.seconds = time.perf_counter() - start
    return report


def _record_run(project: Project, stage: Stage, keys: dict[str, list[str]], report: StageReport) -> None:
    name = "run-" + hashlib.sha256(str(project.script_path).encode()).hexdigest()[:16]
    manifest = project.store.read_manifest(name) or {"script": str(project.script_path), "stages": {}}
    manifest["title"] = project.plan.title
    manifest["shots"] = [s.id for s in project.plan.shots]
    if stage.per_movie:
        stage_keys = {str(project.movie_dir): keys[stage.name][0]}
    else:
        stage_keys = {s.id: keys[stage.name][s.index] for s in project.plan.shots}
    manifest["stages"][stage.name] = {"keys": stage_keys, "report": report.to_dict(), "finished": time.time()}
    project.store.write_manifest(name, manifest)
