"""Plain functions behind ``mdream encode|keyframes|render|video|generate`` (importable from Python).

Which stages exist, their order and which per-movie steps follow them all come from the pipeline
definition (:mod:`mdream.stages.registry`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdream.errors import InputError
from mdream.stages.movie import publish_copy
from mdream.stages.options import RunOptions
from mdream.stages.pipeline import Project, StageReport, run_stage
from mdream.stages.registry import check_name, new_stages, stage_names


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
    """What :func:`generate` did and wrote."""

    reports: list[StageReport]
    """One report per stage and step that ran, in pipeline order."""
    movie_dir: Path | None = None
    """The movie folder (keyframes, shots.json, storyboard.png, animatic.mp4), when it was written."""
    output: Path | None = None
    """The movie file, when it was written."""
    movie_kind: str | None = None
    """``animatic`` (keyframes held for each shot's duration: the bundle has no video model) or ``video``."""

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output) if self.output else None,
                "movie_dir": str(self.movie_dir) if self.movie_dir else None,
                "movie_kind": self.movie_kind, "stages": [r.to_dict() for r in self.reports]}


def generate(
    script_path: str | Path, output: Path, options: RunOptions | None = None, until: str = "video",
    transition: str | None = None,
) -> GenerateResult:
    """Run every stage (up to ``until``) and write the movie ``output`` (mp4).

    The keyframes and the previews (storyboard, animatic) are written to the movie folder beside
    ``output`` (``movie.mp4`` -> ``movie/``) by the export step right after they are rendered, so a
    failure in a later stage still leaves them. While the model bundle has no video model, the movie
    is the animatic: each keyframe held for its shot's duration. With a video model, the movie is every shot's
    clip muxed at the script's fps and output size, joined by ``transition`` (``cut`` or ``crossfade``; default:
    the script's ``output.transition``).
    """
    check_name(until, "--until")
    if transition is not None and transition not in ("cut", "crossfade"):
        raise InputError(f"Unknown transition {transition!r}.", hint="--transition takes cut or crossfade")
    output = Path(output)
    if output.suffix.lower() != ".mp4":
        raise InputError(f"The movie file {output} must end in .mp4.", hint="e.g. -o movie.mp4 (its folder movie/ "
                         "gets the keyframes and previews)")
    movie_dir = movie_dir_for(output)
    if until != stage_names()[-1]:
        _, reports = run_pipeline(script_path, until, options, movie_dir=movie_dir)
        exported = any(r.stage == "export" for r in reports)
        return GenerateResult(reports, movie_dir if exported else None)
    project = Project.open(script_path, options, movie_dir=movie_dir)
    video = project.bundle.components.get("video")
    if video is None or not video.exists:
        _, reports = run_pipeline(script_path, "export", options, movie_dir=movie_dir, project=project)
        publish_copy(movie_dir / "animatic.mp4", output)
        return GenerateResult(reports, movie_dir, output, "animatic")
    _, reports = run_pipeline(script_path, until, options, movie_dir=movie_dir, project=project)
    from mdream.stages.movie import write_movie
    from mdream.stages.pipeline import ArtifactSequence, plan_keys

    keys = plan_keys(project, new_stages(until))
    clips = ArtifactSequence(project, "video", project.plan.shots, keys["video"], "movie")
    write_movie(project, clips, output, transition or project.plan.output.transition)
    return GenerateResult(reports, movie_dir, output, "video")


def movie_dir_for(output: Path) -> Path:
    """The movie folder that goes with a movie file: ``movie.mp4`` -> ``movie/``."""
    return Path(output).with_suffix("")
