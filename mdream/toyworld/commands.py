"""The plain functions behind `mdream toyworld ...`: check the user's options, then do the work.

User mistakes raise :class:`~mdream.errors.InputError` with a hint; the CLI only parses options.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mdream.errors import InputError
from mdream.toyworld.episode import CastMember, ShotSpec, make_episode
from mdream.toyworld.render import SIZES, render_face_photo, render_keyframe
from mdream.toyworld.script_writer import write_script
from mdream.toyworld.world import ACTIONS, CAMERAS, World, make_world


def _check_size(size: int) -> None:
    if size not in SIZES:
        raise InputError(f"--size must be one of {', '.join(map(str, SIZES))}, got {size}",
                         hint="the toy world draws 32, 64 or 128 pixel frames")


def _check_out_dir(out_dir: Path, marker: str) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir} exists and is not a folder", hint="pass a folder path with -o")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / marker).exists():
        raise InputError(f"{out_dir} is not empty and holds no {marker}; refusing to write into it",
                         hint="pass a new or empty folder (an earlier output folder of this command is fine)")


def toy_script(out_dir: str | Path, seed: int = 0, shots: int = 60, size: int = 64, faces_per_character: int = 2,
               world_seed: int = 0, title: str | None = None, clips: bool = False, progress: bool = False,
               given_keyframes: bool = False, independent_hidden: bool = False) -> Path:
    """Write a toy episode as an mdream script with face photos and ground truth; returns script.yaml.

    With `independent_hidden`, also OUT/independent/: the ground truth with each shot's hidden state drawn
    anew (the chance floor of continuity)."""
    out = Path(out_dir)
    _check_size(size)
    if not 1 <= shots <= 100_000:
        raise InputError(f"--shots must be between 1 and 100000, got {shots}")
    if faces_per_character < 1:
        raise InputError(f"--faces must be >= 1, got {faces_per_character}",
                         hint="every script character needs at least one face photo")
    _check_out_dir(out, "script.yaml")
    world = make_world(world_seed)
    episode = make_episode(world, seed=seed, n_shots=shots)
    return write_script(world, episode, out, title or f"Toy episode {seed}", seed, size, faces_per_character,
                        clips=clips, progress=progress, given_keyframes=given_keyframes,
                        independent_hidden=independent_hidden)


def toy_dataset(out_dir: str | Path, episodes: int, shots_per_episode: int = 50, size: int = 32, seed: int = 0,
                clip_frames: int = 0, faces_per_shot: int = 0, shard_size: int = 1000, world_seed: int = 0,
                workers: int | None = None, progress: bool = True):
    """Write a sharded toy training set; returns its DatasetInfo."""
    from mdream.toyworld.dataset import write_dataset

    out = Path(out_dir)
    _check_size(size)
    if episodes < 1 or shots_per_episode < 1:
        raise InputError("--episodes and --shots-per-episode must be >= 1")
    if shard_size < 1:
        raise InputError(f"--shard-size must be >= 1, got {shard_size}")
    if clip_frames == 1 or clip_frames < 0:
        raise InputError(f"--clip-frames must be 0 or at least 2, got {clip_frames}")
    if faces_per_shot < 0:
        raise InputError(f"--faces-per-shot must be >= 0, got {faces_per_shot}")
    _check_out_dir(out, "dataset.json")
    for stale in list(out.glob("shard-*.npz")) + list(out.glob("shard-*.jsonl")):
        stale.unlink()  # a rewrite of an earlier dataset: drop its shards first
    return write_dataset(out, episodes=episodes, shots_per_episode=shots_per_episode, size=size, seed=seed,
                         shard_size=shard_size, clip_frames=clip_frames, faces_per_shot=faces_per_shot,
                         progress=progress, world_seed=world_seed, workers=workers)


def contact_sheet(world: World, size: int = 64, seed: int = 0) -> np.ndarray:
    """A picture of the world: every character (face photo + medium shot) and every scene (wide shot).

    Rows of 8 tiles of `size` pixels; uint8 [rows * size, 8 * size, 3].
    """
    rng = np.random.default_rng(seed)
    tiles = []
    for i, c in enumerate(world.characters):
        face = render_face_photo(world, c.id, rng)
        tiles.append(np.asarray(Image.fromarray(face).resize((size, size), Image.Resampling.BOX)))
        scene = world.scenes[i % len(world.scenes)].id
        action = ACTIONS[i % len(ACTIONS)]
        tiles.append(render_keyframe(world, ShotSpec(scene, (CastMember(c.id, "center", action, "happy"),),
                                                     "medium"), size, rng))
    for s in world.scenes:
        for camera in CAMERAS:
            cast = tuple(CastMember(c.id, p, "stand", "neutral") for c, p in
                         zip(world.characters[:3], ("left", "center", "right"), strict=True))
            cast = cast[:2] if camera == "close-up" else cast
            if camera == "close-up":
                cast = (CastMember(cast[0].character_id, "left", "stand", "neutral"),
                        CastMember(cast[1].character_id, "right", "stand", "neutral"))
            tiles.append(render_keyframe(world, ShotSpec(s.id, cast, camera), size, rng))
        tiles.append(render_keyframe(world, ShotSpec(s.id, (), "wide"), size, rng))
    columns = 8
    rows = -(-len(tiles) // columns)
    sheet = np.full((rows * size, columns * size, 3), 255, np.uint8)
    for k, tile in enumerate(tiles):
        r, col = divmod(k, columns)
        sheet[r * size:(r + 1) * size, col * size:(col + 1) * size] = tile
    return sheet


def toy_preview(out_path: str | Path, size: int = 64, world_seed: int = 0) -> Path:
    """Save the contact sheet of the world as a PNG; returns its path."""
    _check_size(size)
    out = Path(out_path)
    if out.suffix.lower() != ".png":
        raise InputError(f"the preview is a PNG; got {out}", hint="name the output file *.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(contact_sheet(make_world(world_seed), size)).save(out)
    return out
