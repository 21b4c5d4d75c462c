"""Previews of a movie before any video is generated: the storyboard and the animatic.

* :func:`write_storyboard`: every keyframe in a grid, each captioned with its shot id and identifier (PNG).
* :func:`write_animatic`: an H.264 mp4 in which each keyframe is held for its shot's duration at the
  script's fps, upscaled for viewing. Frames are streamed to ffmpeg (imageio-ffmpeg's bundled
  binary), never held in memory as a whole movie.

Both write through :func:`mdream.cache.atomic_path`: a temp file beside the target, renamed into place, so an
interrupted write never leaves a half-written preview under the final name (and
:func:`mdream.cache.remove_stale_temp_files` clears the temp files a killed process left).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mdream.cache import atomic_path


def shot_frame_counts(durations: Sequence[float], fps: int) -> list[int]:
    """Frames per shot so that the movie has ``round(total duration * fps)`` frames.

    Shot ``i`` ends at frame ``round(t_i * fps)``, ``t_i`` its end time, so rounding never
    accumulates: each shot is within one frame of ``duration * fps`` and the total is exact.
    Every shot gets at least one frame.
    """
    counts, end_time, done = [], 0.0, 0
    for duration in durations:
        end_time += float(duration)
        end = max(done + 1, round(end_time * fps))
        counts.append(end - done)
        done = end
    return counts


def viewing_size(width: int, height: int, min_side: int = 256) -> tuple[int, int]:
    """An even-sized (H.264 yuv420p needs even sides) upscale of ``width x height`` by an
    integer factor, so that the shorter side reaches at least ``min_side`` pixels."""
    factor = max(1, math.ceil(min_side / max(1, min(width, height))))
    return 2 * math.ceil(width * factor / 2), 2 * math.ceil(height * factor / 2)


def _rgb(image: Image.Image | np.ndarray) -> Image.Image:
    return (image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))).convert("RGB")


@dataclass
class AnimaticInfo:
    """What :func:`write_animatic` wrote."""

    path: Path
    frames: int
    fps: int
    width: int
    height: int


def write_animatic(
    shots: Iterable[tuple[Image.Image | np.ndarray, int]],
    path: str | Path,
    fps: int,
    size: tuple[int, int],
    quality: int = 8,
) -> AnimaticInfo:
    """Write ``(keyframe, frame count)`` pairs as an H.264 yuv420p mp4 at ``fps``, each keyframe
    upscaled to ``size`` (even width, height) with a Lanczos filter and repeated for its frames.

    ``shots`` may be a generator: each keyframe is read, written and dropped in turn.
    """
    import imageio_ffmpeg

    path, (width, height) = Path(path), size
    if width % 2 or height % 2:
        raise ValueError(f"H.264 yuv420p needs an even frame size, got {width}x{height}")
    frames = 0
    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
            quality=quality, macro_block_size=1, ffmpeg_log_level="error",
            output_params=["-movflags", "+faststart", "-f", "mp4"],  # the temp name has no .mp4
        )
        writer.send(None)  # start ffmpeg
        try:
            for image, count in shots:
                frame = np.ascontiguousarray(
                    np.asarray(_rgb(image).resize((width, height), Image.Resampling.LANCZOS))
                )  # [H, W, 3] uint8
                for _ in range(count):
                    writer.send(frame)
                frames += count
        finally:
            writer.close()
    return AnimaticInfo(path, frames, fps, width, height)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without scalable default font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    """``text`` cut (with an ellipsis) to fit ``width`` pixels; control characters dropped."""
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def write_storyboard(
    keyframes: Sequence[Image.Image | np.ndarray],
    captions: Sequence[tuple[str, str]],
    path: str | Path,
    title: str = "",
    columns: int = 6,
    cell: int = 192,
) -> Path:
    """Every keyframe in a grid (``columns`` wide, each upscaled to ``cell`` pixels wide), captioned
    with ``(shot id, identifier)`` below it; ``title`` above the grid. Writes a PNG."""
    if len(keyframes) != len(captions):
        raise ValueError(f"{len(keyframes)} keyframes but {len(captions)} captions")
    path = Path(path)
    columns = max(1, min(columns, len(keyframes) or 1))
    rows = max(1, math.ceil(len(keyframes) / columns))
    first = _rgb(keyframes[0]) if keyframes else Image.new("RGB", (1, 1))
    cell_h = max(1, round(cell * first.height / max(1, first.width)))
    pad, line = 8, 14
    font, title_font = _font(12), _font(16)
    caption_h = 2 * line + 4
    title_h = 28 if title else 0
    sheet = Image.new("RGB", (pad + columns * (cell + pad), title_h + pad + rows * (cell_h + caption_h + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 6), _fit(draw, title, title_font, sheet.width - 2 * pad), fill="black", font=title_font)
    for i, (image, (shot_id, identifier)) in enumerate(zip(keyframes, captions, strict=True)):
        x = pad + (i % columns) * (cell + pad)
        y = title_h + pad + (i // columns) * (cell_h + caption_h + pad)
        sheet.paste(_rgb(image).resize((cell, cell_h), Image.Resampling.LANCZOS), (x, y))
        draw.text((x, y + cell_h + 2), _fit(draw, f"{i + 1}. {shot_id}", font, cell), fill="black", font=font)
        draw.text((x, y + cell_h + 2 + line), _fit(draw, identifier, font, cell), fill=(90, 90, 90), font=font)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path


@dataclass
class VideoInfo:
    """An mp4 as read back: frame count, fps and size."""

    frames: int
    fps: float
    width: int
    height: int


def read_video_info(path: str | Path) -> VideoInfo:
    """Decode ``path`` (imageio-ffmpeg) and count its frames; for tests and checks."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(reader)
        frames = sum(1 for _ in reader)
    finally:
        reader.close()
    width, height = meta["size"]
    return VideoInfo(frames, float(meta["fps"]), int(width), int(height))
