"""Plain functions behind ``mdream encode|keyframes|render|video|generate`` (importable from Python).

Which stages exist, their order and which per-movie steps follow them all come from the pipeline
definition (:mod:`mdream.stages.registry`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mdream.errors import InputError
from mdream.models.bundle import COMPONENT_NAMES
from mdream.stages.movie import publish_copy
from mdream.stages.options import RunOptions
from mdream.stages.pipeline import Project, StageReport, run_stage
from mdream.stages.registry import check_name, new_stages, pipeline, stage_names

if TYPE_CHECKING:
    from mdream.script import Plan


def run_pipeline(
    script_path: str | Path,
    until: str,
    options: RunOptions | None = None,
    only: bool = False,
    movie_dir: Path | None = None,
    project: Project | None = None,
) -> tuple[Project, list[StageReport]]:
    """Run the pipeline up to ``until``; with ``only``, just that stage (its inputs must be cached).

    A per-movie step (the movie folder's export) runs once one of its upstream stages has run in this
    call and all of them are within ``until``; it writes into ``movie_dir`` (default: the script's
    movie folder). ``project``: the script already opened with these options and ``movie_dir``.
    """
    check_name(until, "--until")
    project = project or Project.open(script_path, options, movie_dir=movie_dir)
    stages = new_stages()
    last = stage_names().index(until)
    ran: set[str] = set()
    reports = []
    for i, stage in enumerate(stages):
        if stage.per_movie:
            within = all(stage_names().index(up) <= last for up in stage.upstream_stages)
            if not (within and ran & set(stage.upstream_stages)):
                continue
        elif i > last or (only and i != last):
            continue
        reports.append(run_stage(project, stage, stages[: i + 1]))
        ran.add(stage.name)
    return project, reports


def run_stages(
    script_path: str | Path, until: str, options: RunOptions | None = None, only: bool = True,
    movie_dir: Path | None = None,
) -> tuple[Project, list[StageReport]]:
    """:func:`run_pipeline`, by default just the one stage ``until`` (what ``mdream STAGE`` runs)."""
    return run_pipeline(script_path, until, options, only=only, movie_dir=movie_dir)


def run_encode(script_path: str | Path, options: RunOptions | None = None) -> list[StageReport]:
    """Encode every shot's cast faces and descriptor."""
    return run_stages(script_path, "encode", options)[1]


def run_keyframes(script_path: str | Path, options: RunOptions | None = None) -> list[StageReport]:
    """Every shot's keyframe tokens (given keyframes encoded; the rest predicted autoregressively)."""
    return run_stages(script_path, "keyframes", options)[1]


def run_render(
    script_path: str | Path, options: RunOptions | None = None, out_dir: Path | None = None
) -> list[StageReport]:
    """Render every shot's keyframe, then write them to the movie folder ``out_dir`` (the export step)."""
    return run_stages(script_path, "render", options, movie_dir=out_dir)[1]


def run_video(script_path: str | Path, options: RunOptions | None = None) -> list[StageReport]:
    """Turn every keyframe into a clip."""
    return run_stages(script_path, "video", options)[1]


@dataclass
class GenerateResult:
    """What :func:`generate` did and wrote (its :meth:`to_dict` is the JSON run report)."""

    reports: list[StageReport]
    """One report per stage and step that ran, in pipeline order."""
    movie_dir: Path | None = None
    """The movie folder (keyframes, shots.json, storyboard.png, animatic.mp4), when it was written."""
    output: Path | None = None
    """The movie file, when it was written."""
    movie_kind: str | None = None
    """``animatic`` (keyframes held for each shot's duration: the bundle has no video model) or ``video``."""
    script: Path | None = None
    """The script the movie was made from."""
    report_path: Path | None = None
    """The JSON run report written beside the movie (``movie.mp4`` -> ``movie.report.json``)."""
    info: dict[str, Any] = field(default_factory=dict)
    """The run's context: mdream version, seed, cache folder, bundle identity, start time, total seconds."""

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output) if self.output else None,
                "movie_dir": str(self.movie_dir) if self.movie_dir else None,
                "movie_kind": self.movie_kind,
                "script": str(self.script) if self.script else None,
                "report": str(self.report_path) if self.report_path else None,
                **self.info,
                "stages": [r.to_dict() for r in self.reports]}


def required_components(plan: Plan, until: str = "video") -> list[str]:
    """The bundle components a run up to ``until`` cannot do without.

    The video model is optional (without it the movie is the animatic); the keyframe AR model is
    needed only when a shot has no keyframe of its own to encode.
    """
    names = stage_names()
    last = names.index(until)
    needed: list[str] = []
    for cls in pipeline():
        if cls.per_movie or names.index(cls.name) > last:
            continue
        for component in cls.components:
            if component == "video" or component in needed:
                continue
            if component == "keyframe_ar" and all(shot.keyframe is not None for shot in plan.shots):
                continue
            needed.append(component)
    return needed


def report_path_for(output: Path) -> Path:
    """The run report that goes with a movie file: ``movie.mp4`` -> ``movie.report.json``."""
    return Path(output).with_suffix(".report.json")


def generate(
    script_path: str | Path, output: Path, options: RunOptions | None = None, until: str = "video",
    project: Project | None = None, transition: str | None = None,
) -> GenerateResult:
    """Run every stage (up to ``until``) and write the movie ``output`` (mp4) and its run report.

    The keyframes and the previews (storyboard, animatic) are written to the movie folder beside
    ``output`` (``movie.mp4`` -> ``movie/``) by the export step right after they are rendered, so a
    failure in a later stage still leaves them. While the model bundle has no video model, the movie
    is the animatic: each keyframe held for its shot's duration. With a video model, the movie is every shot's
    clip muxed at the script's fps and output size, joined by ``transition`` (``cut`` or ``crossfade``; default:
    the script's ``output.transition``). Before any work, every component the run needs must be present (one
    error names all that are not). The run report (per stage: time, keys made and reused, outputs; the bundle's
    identity, the seed, mdream's version) is written to ``movie.report.json`` beside ``output``.
    """
    check_name(until, "--until")
    if transition is not None and transition not in ("cut", "crossfade"):
        raise InputError(f"Unknown transition {transition!r}.", hint="--transition takes cut or crossfade")
    output = _check_movie_path(output)
    movie_dir = movie_dir_for(output)
    started, clock = datetime.now(UTC), time.perf_counter()
    project = project or Project.open(script_path, options, movie_dir=movie_dir)
    project.bundle.require(required_components(project.plan, until), f"`generate {Path(script_path).name}`")
    if until != stage_names()[-1]:
        _, reports = run_pipeline(script_path, until, options, movie_dir=movie_dir, project=project)
        exported = any(r.stage == "export" for r in reports)
        result = GenerateResult(reports, movie_dir if exported else None)
    else:
        video = project.bundle.components.get("video")
        if video is not None and video.present and "video" in stage_names():  # clips to mux
            _, reports = run_pipeline(script_path, until, options, movie_dir=movie_dir, project=project)
            reports.append(mux_movie(project, output, transition or project.plan.output.transition))
            result = GenerateResult(reports, movie_dir, output, "video")
        else:
            _, reports = run_pipeline(script_path, "export", options, movie_dir=movie_dir, project=project)
            publish_copy(movie_dir / "animatic.mp4", output)
            result = GenerateResult(reports, movie_dir, output, "animatic")
    result.script = project.script_path
    result.report_path = report_path_for(output)
    result.info = _run_info(project, started, time.perf_counter() - clock)
    _write_report(result)
    return result


#: The version of the movie mux (part of its cache key).
MUX_VERSION = "1"


def mux_movie(project: Project, output: Path, transition: str) -> StageReport:
    """The ``mux`` step of ``generate``: mux every shot's clip into ``output`` (:func:`mdream.stages.movie.write_movie`) as a cached step: its key
    derives from every clip's key, the transition, the output settings and the file's path, and a rerun whose
    movie file is still the one it wrote (size and mtime) skips the mux. ``--force video`` muxes again."""
    from mdream.cache import artifact_key
    from mdream.stages.movie import write_movie
    from mdream.stages.pipeline import ArtifactSequence, plan_keys, produce_outputs

    keys = plan_keys(project, new_stages("video"))["video"]
    key = artifact_key(stage="mux", stage_version=MUX_VERSION, bundle_id="",
                       inputs={"output": str(output.resolve()), "transition": transition,
                               "settings": project.plan.output.model_dump(mode="json")},
                       seed=0, upstream=keys)
    clips = ArtifactSequence(project, "video", project.plan.shots, keys, "mux")
    return produce_outputs(project, "mux", key, str(output),
                           lambda: [write_movie(project, clips, output, transition)],
                           force=project.options.forces("video"))


def generate_many(
    scripts: list[Path], output: Path | None, options: RunOptions | None = None, until: str = "video",
    transition: str | None = None,
) -> list[GenerateResult]:
    """:func:`generate` for several scripts, one after the other.

    ``output``: one script: the movie file (default ``movie.mp4``); several: a folder that gets
    ``<script name>.mp4`` for each (default: each movie beside its script, ``<script name>.mp4``).
    Every script is opened and its bundle checked before any work, so a bad script or a missing model
    fails at once, not after an hour of rendering.
    """
    if not scripts:
        raise InputError("No script given.", hint="mdream generate SCRIPT.yaml [MORE.yaml ...] [-o OUT]")
    check_name(until, "--until")
    if len(scripts) == 1:
        movies = [_check_movie_path(output or Path("movie.mp4"))]
    else:
        if output is not None and output.suffix.lower() == ".mp4":
            raise InputError(f"With {len(scripts)} scripts, -o names a folder, not the movie file {output}.",
                             hint="e.g. -o movies/ (each script's movie becomes movies/SCRIPT_NAME.mp4), or no -o "
                             "(each movie goes beside its script)")
        movies = [(output / f"{Path(s).stem}.mp4") if output is not None else Path(s).with_suffix(".mp4")
                  for s in scripts]
        seen: dict[Path, Path] = {}
        for script, movie in zip(scripts, movies, strict=True):
            key = movie.expanduser().resolve()
            if key in seen:
                raise InputError(f"The scripts {seen[key]} and {script} would both write {movie}.",
                                 hint="give the scripts different names, or run them one at a time with -o")
            seen[key] = script
    projects = []
    for script, movie in zip(scripts, movies, strict=True):
        project = Project.open(script, options, movie_dir=movie_dir_for(movie))
        project.bundle.require(required_components(project.plan, until), f"`generate {Path(script).name}`")
        projects.append(project)
    return [generate(script, movie, options, until, project=project, transition=transition)
            for script, movie, project in zip(scripts, movies, projects, strict=True)]


def _check_movie_path(output: Path) -> Path:
    output = Path(output)
    if output.suffix.lower() != ".mp4":
        raise InputError(f"The movie file {output} must end in .mp4.", hint="e.g. -o movie.mp4 (its folder movie/ "
                         "gets the keyframes and previews)")
    return output


def _run_info(project: Project, started: datetime, seconds: float) -> dict[str, Any]:
    import mdream

    bundle = project.bundle
    return {
        "mdream_version": mdream.__version__,
        "title": project.plan.title,
        "seed": project.seed,
        "cache_dir": str(project.store.root),
        "bundle": {
            "name": bundle.name,
            "file": str(bundle.file) if bundle.file else None,
            "identity": bundle.identity(list(COMPONENT_NAMES)),
            "components": {name: bundle._component_identity(name) for name in bundle.components},
        },
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
    }


def _write_report(result: GenerateResult) -> None:
    from mdream.cache import atomic_write_bytes

    assert result.report_path is not None
    result.report_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(result.report_path, (json.dumps(result.to_dict(), indent=2, default=str) + "\n").encode())


def movie_dir_for(output: Path) -> Path:
    """The movie folder that goes with a movie file: ``movie.mp4`` -> ``movie/``."""
    return Path(output).with_suffix("")
