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


#: Crossfade length in seconds (at most half of the outgoing shot).
CROSSFADE_SECONDS = 0.5


def _clip_frames(art: Artifact, shot_id: str):
    """A video artifact's frames, uint8 [T, h, w, 3]; a clear error when the tensor is not a clip."""
    from mdream.errors import MdreamError

    try:
        frames = art.load_tensors("clip")["frames"]
    except Exception as exc:  # a file that passed its checksum but is not a clip tensor
        raise MdreamError(f"The video clip of shot {shot_id!r} cannot be read ({exc}).",
                          hint="rerun with `--force video` to draw it again") from None
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype.is_floating_point:
        raise MdreamError(f"The video clip of shot {shot_id!r} is not uint8 frames [T, H, W, 3] "
                          f"(got {tuple(frames.shape)} {frames.dtype}).", hint="rerun with `--force video`")
    return frames.numpy()


def write_movie(project: Project, clips: Sequence[Artifact], path: Path, transition: str = "cut",
                quality: int = 8) -> Path:
    """Mux every shot's clip into an H.264 yuv420p mp4 at the script's fps and viewing size (the output size,
    upscaled by an integer factor until its shorter side reaches 256 pixels, like the animatic's).

    Frames are upscaled with a Lanczos filter and streamed to ffmpeg (imageio-ffmpeg) one shot at a time,
    never the whole movie in memory. Each shot gets ``round(duration * fps)`` frames (its clip). ``transition``:
    ``cut``, or ``crossfade``: the last frames of a shot (``CROSSFADE_SECONDS``, at most half the shot) dissolve
    into the next shot's first frame, so the frame count stays the same. Written through a temp file.
    """
    import imageio_ffmpeg
    import numpy as np
    from PIL import Image

    from mdream.cache import atomic_path, remove_stale_temp_files
    from mdream.errors import InputError
    from mdream.stages.preview import viewing_size

    if transition not in ("cut", "crossfade"):
        raise InputError(f"Unknown transition {transition!r}.", hint="transitions are: cut, crossfade")
    out, shots = project.plan.output, project.plan.shots
    width, height = viewing_size(out.width, out.height)  # even, as yuv420p needs
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path.parent, lambda name: name == path.name)

    def scaled(frame: np.ndarray) -> np.ndarray:
        image = Image.fromarray(np.ascontiguousarray(frame))
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.LANCZOS)
        return np.ascontiguousarray(np.asarray(image, np.uint8))  # [H, W, 3]

    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (width, height), fps=out.fps, codec="libx264", pix_fmt_out="yuv420p", quality=quality,
            macro_block_size=1, ffmpeg_log_level="error", output_params=["-movflags", "+faststart", "-f", "mp4"],
        )
        writer.send(None)  # start ffmpeg
        try:
            for i, shot in enumerate(shots):
                frames = _clip_frames(clips[i], shot.id)  # [T, h, w, 3]
                fade = 0
                if transition == "crossfade" and i + 1 < len(shots):
                    fade = min(round(CROSSFADE_SECONDS * out.fps), len(frames) // 2)
                    target = _clip_frames(clips[i + 1], shots[i + 1].id)[0].astype(np.float32)  # next shot's first frame
                for t, frame in enumerate(frames):
                    k = t - (len(frames) - fade)  # >= 0 inside the fade
                    if k >= 0:
                        alpha = (k + 1) / (fade + 1)
                        if target.shape != frame.shape:
                            target = np.asarray(Image.fromarray(target.astype(np.uint8)).resize(
                                (frame.shape[1], frame.shape[0]), Image.Resampling.LANCZOS), np.float32)
                        frame = ((1 - alpha) * frame + alpha * target).round().astype(np.uint8)
                    writer.send(scaled(frame))
        finally:
            writer.close()
    return path


def publish_copy(source: Path, target: Path) -> Path:
    """Copy ``source`` to ``target`` through a temporary file beside it (never a half-written ``target``); a temp file
    of this name that a killed process left is removed first."""
    import shutil

    from mdream.cache import atomic_write, remove_stale_temp_files

    remove_stale_temp_files(target.parent, lambda name: name == target.name)
    with open(source, "rb") as src:
        atomic_write(target, lambda dst: shutil.copyfileobj(src, dst))
    return target
