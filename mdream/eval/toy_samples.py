"""Toy-world samples the evaluator and the trainers share: random shots, square face crops."""

from __future__ import annotations

import numpy as np
from PIL import Image

from mdream.eval.face_embedder import FACE_SIZE


def random_shot(world, rng: np.random.Generator, min_cast: int = 0):
    """A uniformly random shot of `world`: any scene, 0-3 distinct characters at random positions,
    hidden palette and trousers drawn uniformly too.

    Episodes follow a story; the analyser and embedder want every combination, so they sample here.
    """
    from mdream.toyworld.episode import CastMember, ShotSpec
    from mdream.toyworld.world import ACTIONS, CAMERAS, EXPRESSIONS, PALETTES, POSITIONS, TROUSER_COLOURS

    n_cast = int(rng.choice(np.arange(min_cast, 4)))
    chars = rng.choice(len(world.characters), size=n_cast, replace=False)
    positions = sorted(rng.choice(3, size=n_cast, replace=False))
    cast = tuple(
        CastMember(
            world.characters[int(c)].id,
            POSITIONS[int(p)],
            str(rng.choice(ACTIONS)),
            str(rng.choice(EXPRESSIONS)),
            int(rng.integers(len(TROUSER_COLOURS))),
        )
        for c, p in zip(chars, positions, strict=True)
    )
    cameras = CAMERAS if n_cast < 3 else tuple(c for c in CAMERAS if c != "close-up")
    return ShotSpec(world.scenes[int(rng.integers(len(world.scenes)))].id, cast, str(rng.choice(cameras)),
                    int(rng.integers(len(PALETTES))))


def square_box(box: tuple[float, float, float, float], height: int, width: int) -> tuple[float, ...]:
    """Undo the frame clipping of a square face box: extend the clipped side past the frame edge.

    ``face_boxes`` clips boxes to the frame; resizing a clipped (non-square) box to 112x112 would
    stretch the face, so the crop is taken square and edge-padded instead.
    """
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0)
    if x1 - x0 < side:
        if x0 <= 0:
            x0 = x1 - side
        else:
            x1 = x0 + side
    if y1 - y0 < side:
        if y0 <= 0:
            y0 = y1 - side
        else:
            y1 = y0 + side
    return (x0, y0, x1, y1)


def crop_resized(frame: np.ndarray, box: tuple[float, float, float, float], size: int = FACE_SIZE) -> np.ndarray:
    """Cut box (x0, y0, x1, y1) out of frame [H, W, 3] (edge-padded if it leaves the frame) -> [size, size, 3]."""
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    pad = max(0, -x0, -y0, x1 - w, y1 - h)
    if pad:
        frame = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
    crop = Image.fromarray(np.ascontiguousarray(frame[y0:y1, x0:x1]))
    return np.asarray(crop.resize((size, size), Image.BILINEAR))


def toy_shot_clips(plan, view, size: int = 32, seed: int = 0, held: bool = False) -> list[np.ndarray]:
    """Ground-truth clips of a planned toy script's shots: each shot mapped onto the toy world by ``view``
    (:class:`mdream.eval.evaluate.ToyView`) and rendered by ``render_clip`` with its planned frame count
    (``round(duration * fps)``); with ``held``, its keyframe repeated instead (the animatic). uint8 [T, size, size, 3]
    each: the ceiling and the floor of the evaluator's motion agreement."""
    from mdream.stages.preview import shot_frame_counts
    from mdream.toyworld import render_clip

    counts = shot_frame_counts([shot.duration for shot in plan.shots], plan.output.fps)
    clips = []
    for shot, count in zip(plan.shots, counts, strict=True):
        rng = np.random.default_rng([seed, shot.index, 0xC11])
        clip = render_clip(view.world, view.shot_spec(shot), size, max(2, count), rng)[:count]
        clips.append(np.repeat(clip[:1], count, axis=0) if held else clip)
    return clips


def write_clips_movie(plan, clips: list[np.ndarray], path) -> object:
    """Mux per-shot clips (uint8 [T, H, W, 3], plan order) into ``path`` with the pipeline's own movie writer
    (:func:`mdream.stages.movie.write_movie`: the script's fps, upscaled with Lanczos to the viewing size, H.264): a movie as
    `mdream generate` writes it, from clips made by hand. Returns the path."""
    from types import SimpleNamespace

    import torch

    from mdream.stages.movie import write_movie

    artifacts = [SimpleNamespace(load_tensors=lambda name, c=c: {"frames": torch.from_numpy(np.ascontiguousarray(c))})
                 for c in clips]
    return write_movie(SimpleNamespace(plan=plan), artifacts, path)
