"""The movie folder (``docs/architecture.md``): what `render`/`generate` write and `mdream eval` reads.

It is written by the pipeline's per-movie ``export`` step (:class:`mdream.stages.definitions.ExportStep`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mdream.cache import Artifact
    from mdream.stages.pipeline import Project


def default_movie_dir(script_path: Path) -> Path:
    """``<script folder>/<script name>.movie/``."""
    return script_path.parent / f"{script_path.stem}.movie"


def export_keyframes(project: Project, renders: Sequence[Artifact], out_dir: Path) -> list[Path]:
    """Copy every shot's rendered keyframe to ``out_dir/keyframes/NNNN.png`` and write ``shots.json``.

    ``renders``: the render artifacts in plan order (an :class:`~mdream.stages.pipeline.ArtifactSequence`
    raises a clear error for a missing or corrupt one). Files are replaced atomically one by one, so an
    interrupted export leaves valid PNGs only (and its temp files, which the next export removes).
    Returns the files written.
    """
    from mdream.cache import atomic_write_bytes, remove_stale_temp_files

    frames = out_dir / "keyframes"
    frames.mkdir(parents=True, exist_ok=True)
    # An export killed mid-write leaves its temp file (.0003.png.tmp-<pid>-<hex>): remove those of
    # dead processes, and only ours (a live export to the same folder keeps its own).
    remove_stale_temp_files(frames, lambda name: name.endswith(".png") and name[:-4].isdigit())
    remove_stale_temp_files(out_dir, lambda name: name == "shots.json")
    written: list[Path] = []
    for shot, art in zip(project.plan.shots, renders, strict=True):
        target = frames / f"{shot.index:04d}.png"
        atomic_write_bytes(target, art.path("keyframe.png").read_bytes())
        written.append(target)
    for stale in frames.glob("*.png"):  # a shorter script than last time: drop the extra frames
        if stale.stem.isdigit() and int(stale.stem) >= len(project.plan.shots):
            stale.unlink()
    shots = {"title": project.plan.title, "script": str(project.script_path),
             "shots": [{"index": s.index, "id": s.id} for s in project.plan.shots]}
    atomic_write_bytes(out_dir / "shots.json", (json.dumps(shots, indent=2) + "\n").encode())
    written.append(out_dir / "shots.json")
    return written


def write_previews(project: Project, renders: Sequence[Artifact], out_dir: Path) -> list[Path]:
    """The previews a user checks before spending GPU hours on video: ``storyboard.png`` (every keyframe with
    its shot id and identifier) and ``animatic.mp4`` (each keyframe held for its shot's duration at the
    script's fps, upscaled for viewing; frames streamed to the encoder). Returns the files written."""
    from PIL import Image

    from mdream.stages.preview import shot_frame_counts, viewing_size, write_animatic, write_storyboard

    def keyframe(art: Artifact) -> Image.Image:
        with Image.open(art.path("keyframe.png")) as image:
            return image.convert("RGB")

    from mdream.cache import remove_stale_temp_files

    # a preview write killed midway leaves its temp file: remove those of dead processes
    remove_stale_temp_files(out_dir, lambda name: name in ("storyboard.png", "animatic.mp4"))
    shots, out = project.plan.shots, project.plan.output
    storyboard = write_storyboard(
        [keyframe(art) for art in renders], [(s.id, s.identifier) for s in shots], out_dir / "storyboard.png",
        title=project.plan.title,
    )
    counts = shot_frame_counts([s.duration for s in shots], out.fps)
    animatic = write_animatic(
        ((keyframe(renders[i]), counts[i]) for i in range(len(shots))),  # one keyframe in memory at a time
        out_dir / "animatic.mp4", fps=out.fps, size=viewing_size(out.width, out.height),
    )
    return [storyboard, animatic.path]


def publish_copy(source: Path, target: Path) -> Path:
    """Copy ``source`` to ``target`` through a temporary file beside it (never a half-written ``target``); a temp file
    of this name that a killed process left is removed first."""
    import shutil

    from mdream.cache import atomic_write, remove_stale_temp_files

    remove_stale_temp_files(target.parent, lambda name: name == target.name)
    with open(source, "rb") as src:
        atomic_write(target, lambda dst: shutil.copyfileobj(src, dst))
    return target
