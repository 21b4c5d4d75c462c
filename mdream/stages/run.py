"""Plain functions behind ``mdream encode|keyframes|render|video|generate`` (importable from Python)."""

from __future__ import annotations

from pathlib import Path

from mdream.errors import InputError, NotBuiltError
from mdream.stages.definitions import pipeline_stages
from mdream.stages.movie import default_movie_dir, export_keyframes
from mdream.stages.options import STAGE_NAMES, RunOptions
from mdream.stages.pipeline import Project, StageReport, plan_keys, run_stage


def run_stages(
    script_path: str | Path, until: str, options: RunOptions | None = None, only: bool = True
) -> tuple[Project, list[StageReport]]:
    """Run the pipeline up to ``until``; with ``only``, just that stage (its inputs must be cached)."""
    project = Project.open(script_path, options)
    stages = pipeline_stages()
    last = STAGE_NAMES.index(until)
    first = last if only else 0
    return project, [run_stage(project, stages[i], stages[: i + 1]) for i in range(first, last + 1)]


def run_encode(script_path: str | Path, options: RunOptions | None = None) -> list[StageReport]:
    """Encode every shot's cast faces and descriptor."""
    return run_stages(script_path, "encode", options)[1]


def run_keyframes(script_path: str | Path, options: RunOptions | None = None) -> list[StageReport]:
    """Every shot's keyframe tokens (given keyframes encoded; the rest predicted autoregressively)."""
    return run_stages(script_path, "keyframes", options)[1]


def run_render(
    script_path: str | Path, options: RunOptions | None = None, out_dir: Path | None = None
) -> list[StageReport]:
    """Render every shot's keyframe, then write them to the movie folder ``out_dir``."""
    project, reports = run_stages(script_path, "render", options)
    keys = plan_keys(project, pipeline_stages()[:3])["render"]
    export_keyframes(project, keys, out_dir or default_movie_dir(project.script_path))
    return reports


def run_video(script_path: str | Path, options: RunOptions | None = None) -> list[StageReport]:
    """Turn every keyframe into a clip."""
    return run_stages(script_path, "video", options)[1]


def generate(
    script_path: str | Path, output: Path, options: RunOptions | None = None, until: str = "video"
) -> list[StageReport]:
    """Run every stage (up to ``until``), then mux the clips into ``output`` (mp4).

    The keyframes are written to the movie folder beside ``output`` (``movie.mp4`` -> ``movie/``)
    as soon as they are rendered, so a failure in a later stage still leaves them there.
    """
    if until not in STAGE_NAMES:
        raise InputError(f"Unknown stage {until!r} for --until.", hint=f"stages are: {', '.join(STAGE_NAMES)}")
    project = Project.open(script_path, options)
    stages = pipeline_stages()[: STAGE_NAMES.index(until) + 1]
    reports = [run_stage(project, stage, stages[: i + 1]) for i, stage in enumerate(stages)]
    if "render" in STAGE_NAMES[: len(stages)]:
        export_keyframes(project, plan_keys(project, stages)["render"], movie_dir_for(output))
    if until == "video":
        raise NotBuiltError("Muxing clips into a movie is not built yet (it lands with the video stage).")
    return reports


def movie_dir_for(output: Path) -> Path:
    """The movie folder that goes with a movie file: ``movie.mp4`` -> ``movie/``."""
    return Path(output).with_suffix("")
