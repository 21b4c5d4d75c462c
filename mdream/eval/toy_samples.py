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
