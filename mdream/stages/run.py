"""Plain functions behind ``mdream encode|keyframes|render|video|generate`` (importable from Python)."""

from __future__ import annotations

from pathlib import Path

from mdream.stages.definitions import pipeline_stages
from mdream.stages.options import STAGE_NAMES, RunOptions
from mdream.stages.pipeline import Project, StageReport, run_stage


def run_stages(script_path: str | Path, until: str, options: RunOptions | None = None, only: bool = True) -> list[StageReport]:
    """Run the pipeline up to ``until``; with ``only`` just that stage (its inputs must be cached)."""
    project = Project.open(script_path, options)
    stages = pipeline_stages()
    last = STAGE_NAMES.index(until)
    first = last if only else 0
    return [run_stage(project, stages[i], stages[: i + 1]) for i in range(first, last + 1)]


def run_encode(script_path: str | Path, options: RunOptions | None = None) -> list[StageReport]:
    """Encode faces, descriptors and style frames of every shot."""
    return run_stages(script_path, "encode", options)


def run_keyframes(script_path: str | Path, options: RunOptions | None = None) -> list[StageReport]:
    """Predict every shot's keyframe tokens autoregressively."""
    return run_stages(script_path, "keyframes", options)


def run_render(script_path: str | Path, options: RunOptions | None = None) -> list[StageReport]:
    """Render every shot's keyframe image from its tokens."""
    return run_stages(script_path, "render", options)


def run_video(script_path: str | Path, options: RunOptions | None = None) -> list[StageReport]:
    """Turn every keyframe into a clip."""
    return run_stages(script_path, "video", options)


def generate(script_path: str | Path, output: Path, options: RunOptions | None = None) -> list[StageReport]:
    """Run every stage, then mux the clips into ``output`` (mp4)."""
    reports = run_stages(script_path, "video", options, only=False)
    mux_movie(script_path, output, options)
    return reports


def mux_movie(script_path: str | Path, output: Path, options: RunOptions | None = None) -> Path:
    """Concatenate every shot's clip into an H.264 mp4."""
    from mdream.errors import NotBuiltError

    raise NotBuiltError("Muxing clips into a movie is not built yet (it lands with the video stage).")
