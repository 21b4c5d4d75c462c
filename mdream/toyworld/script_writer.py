"""Write a toy episode as a real mdream script, with face photos and its ground-truth movie folder.

Layout of `out_dir`:
    script.yaml                  the mdream script (schema_version 1); ids are the world's ids
    faces/<id>_<k>.png           face photos (112x112 aligned crops), k = 1..faces_per_character
    toyworld.json                the world seed, episode seed and shot labels (for the evaluator)
    groundtruth/keyframes/0000.png ...   one keyframe per shot, in plan order
    groundtruth/shots.json       {"shots": [{"index": 0, "id": "arc1-001"}, ...]}
    independent/...              (with `independent_hidden`) the ground truth with each shot's hidden
                                 variants drawn anew: the chance floor of continuity
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mdream.toyworld.episode import (
    Episode,
    ShotSpec,
    apply_hidden_state,
    draw_hidden_state,
    shot_labels,
    shot_text,
)
from mdream.toyworld.render import render_clip, render_face_photo, render_keyframe
from mdream.toyworld.world import HAIR_COLOURS, World

SCRIPT_FPS = 8
SCRIPT_CLIP_LENGTH = 8


def script_dict(world: World, episode: Episode, title: str, seed: int, size: int = 64,
                faces_per_character: int = 2, given_keyframes: bool = False) -> dict:
    """The script as plain data (what write_script dumps to YAML); face paths are relative.

    With `given_keyframes`, every shot names its ground-truth keyframe (`keyframe:
    groundtruth/keyframes/NNNN.png`): a storyboard that the keyframes stage encodes instead of
    predicting, which is how the tokenizer + renderer round trip is measured.
    """
    rng = np.random.default_rng([seed, world.seed, 0x5C1])
    used_chars = [c.id for c in world.characters if episode.appearances(c.id)]
    used_scenes = [s.id for s in world.scenes if any(shot.scene_id == s.id for shot in episode.shots)]
    characters = [
        {
            "id": cid,
            "name": world.character(cid).name,
            "description": world.character(cid).describe(),
            "faces": [f"faces/{cid}_{k + 1}.png" for k in range(faces_per_character)],
        }
        for cid in used_chars
    ]
    scenes = []
    for sid in used_scenes:
        scene = world.scene(sid)
        scenes.append({
            "id": sid,
            "description": scene.describe(),
            "elements": {
                "props": sorted({p.replace("_", " ") for p, _ in scene.props}),
                "lighting": "indoor" if scene.indoor else "natural",
                "time_of_day": scene.time_of_day,
            },
        })
    shot_ids = episode.shot_ids()
    arcs = []
    for arc_id, start, end in episode.arcs:
        shots = []
        for i in range(start, end):
            shot = episode.shots[i]
            identifier, descriptor = shot_text(world, shot)
            shots.append({
                "id": shot_ids[i],
                "scene": shot.scene_id,
                "characters": [
                    {"id": m.character_id, "action": m.action, "expression": m.expression, "position": m.position}
                    for m in shot.cast
                ],
                "identifier": identifier,
                "descriptor": descriptor,
                "camera": shot.camera,
                "duration": float(rng.choice([2.0, 2.5, 3.0, 3.5, 4.0])),
                **({"keyframe": f"groundtruth/keyframes/{i:04d}.png"} if given_keyframes else {}),
            })
        arcs.append({"id": arc_id, "title": f"Part {arc_id.removeprefix('arc')}", "shots": shots})
    return {
        "schema_version": 1,
        "title": title,
        "seed": int(seed),
        "style": {"text": "toy world, flat colours, simple shapes"},
        "characters": characters,
        "scenes": scenes,
        "arcs": arcs,
        "output": {"width": size, "height": size, "fps": SCRIPT_FPS, "clip_length": SCRIPT_CLIP_LENGTH,
                   "model_bundle": "toy"},
    }


def write_script(world: World, episode: Episode, out_dir: str | Path, title: str, seed: int, size: int = 64,
                 faces_per_character: int = 2, groundtruth: bool = True, clips: bool = False,
                 validate: bool = True, progress: bool = False, given_keyframes: bool = False,
                 independent_hidden: bool = False) -> Path:
    """Write script.yaml, faces/ and groundtruth/ under `out_dir`; returns the script's path.

    Every random choice is seeded by (seed, world seed), so the same call writes the same bytes
    (PNG encoding included). With `validate`, the written script is read back with
    `mdream.script.load_script` (a ScriptError here is a bug of this writer). With `independent_hidden`,
    also `independent/`: `write_independent_groundtruth`'s movie.
    """
    if faces_per_character < 1:
        raise ValueError("faces_per_character must be >= 1 (the script format needs a photo per character)")
    out = Path(out_dir)
    (out / "faces").mkdir(parents=True, exist_ok=True)
    if given_keyframes and not groundtruth:
        raise ValueError("given_keyframes needs groundtruth: the shots point at the ground-truth keyframes")
    data = script_dict(world, episode, title, seed, size, faces_per_character, given_keyframes)
    for character in data["characters"]:
        # One generator per character, so the photos do not depend on who else is in the episode.
        rng = np.random.default_rng([seed, world.seed, world.character_index[character["id"]], 0xFACE])
        for face in character["faces"]:
            Image.fromarray(render_face_photo(world, character["id"], rng)).save(out / face)
    script_path = out / "script.yaml"
    header = (f"# Written by `mdream toyworld script` (world seed {world.seed}, episode seed {episode.seed}).\n"
              f"# Character and scene ids are the toy world's ids.\n")
    script_path.write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110))
    shot_ids = episode.shot_ids()
    meta = {
        "world_seed": world.seed,
        "episode_seed": episode.seed,
        "size": size,
        "shots": [
            {"index": i, "id": shot_ids[i],
             **{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in shot_labels(world, s).items()}}
            for i, s in enumerate(episode.shots)
        ],
        "hair_colours": list(HAIR_COLOURS),
    }
    (out / "toyworld.json").write_text(json.dumps(meta, indent=1))
    if groundtruth:
        write_groundtruth(world, episode, out / "groundtruth", size, seed, clips=clips, progress=progress)
    if independent_hidden:
        write_independent_groundtruth(world, episode, out / "independent", size, seed, progress=progress)
    if validate:  # after the ground truth: given keyframes must exist to validate
        from mdream.script import load_script

        load_script(script_path)
    return script_path


def write_groundtruth(world: World, episode: Episode, movie_dir: str | Path, size: int, seed: int,
                      clips: bool = False, progress: bool = False) -> Path:
    """The ground-truth movie folder: keyframes/0000.png ... and shots.json (docs/architecture.md).

    With `clips`, also clips/0000.mp4 ... (SCRIPT_CLIP_LENGTH frames at SCRIPT_FPS, H.264) whose
    first frame is the keyframe (up to video compression), and movie.mp4 (all clips in order).
    """
    movie = Path(movie_dir)
    (movie / "keyframes").mkdir(parents=True, exist_ok=True)
    shot_ids = episode.shot_ids()
    all_frames = []
    bar = Progress(TextColumn("[bold]ground truth"), BarColumn(), MofNCompleteColumn(), TextColumn("shots"),
                   TimeElapsedColumn(), disable=not progress)
    with bar:
        for i in bar.track(range(len(episode.shots))):
            _write_groundtruth_shot(world, episode.shots[i], movie, i, size, seed, clips, all_frames)
    if clips:
        _write_mp4(movie / "movie.mp4", np.concatenate(all_frames))
    shots = {"shots": [{"index": i, "id": shot_ids[i]} for i in range(len(episode.shots))]}
    (movie / "shots.json").write_text(json.dumps(shots, indent=1))
    return movie


def independent_hidden_shots(world: World, episode: Episode, seed: int) -> list[ShotSpec]:
    """The episode's shots with each shot's hidden variants (palette, trousers) drawn anew, as if every shot
    were a film of its own: what a movie keeps of the hidden state when its shots are made independently."""
    shots = []
    for i, shot in enumerate(episode.shots):
        shot_seed = int(np.random.default_rng([seed, world.seed, i, 0x1DE]).integers(2**31))
        shots.append(apply_hidden_state(shot, draw_hidden_state(world, shot_seed)))
    return shots


def write_independent_groundtruth(world: World, episode: Episode, movie_dir: str | Path, size: int, seed: int,
                                  progress: bool = False) -> Path:
    """A movie folder like `write_groundtruth`'s (the same frames' jitter and noise) whose shots each draw their
    own hidden variants (`independent_hidden_shots`): the chance floor of the evaluator's continuity (about
    1 / #variants agreement), where the ground truth is its ceiling."""
    shots = independent_hidden_shots(world, episode, seed)
    return write_groundtruth(world, dataclasses.replace(episode, shots=shots), movie_dir, size, seed,
                             progress=progress)


def _write_groundtruth_shot(world: World, shot: ShotSpec, movie: Path, i: int, size: int, seed: int, clips: bool,
                            all_frames: list[np.ndarray]) -> None:
    """Keyframe i (and its clip, appended to all_frames for movie.mp4)."""
    shot_seed = [seed, world.seed, i, 0x6E]
    keyframe = render_keyframe(world, shot, size, np.random.default_rng(shot_seed))
    Image.fromarray(keyframe).save(movie / "keyframes" / f"{i:04d}.png")
    if clips:  # the same rng state: the clip's first frame is the keyframe
        (movie / "clips").mkdir(exist_ok=True)
        frames = render_clip(world, shot, size, SCRIPT_CLIP_LENGTH, np.random.default_rng(shot_seed))
        _write_mp4(movie / "clips" / f"{i:04d}.mp4", frames)
        all_frames.append(frames)


def _write_mp4(path: Path, frames: np.ndarray, fps: int = SCRIPT_FPS) -> None:
    """frames uint8 [T, H, W, 3] -> H.264 mp4 (yuv420p, near-lossless so metrics see the truth)."""
    import imageio_ffmpeg

    T, H, W, _ = frames.shape
    writer = imageio_ffmpeg.write_frames(str(path), (W, H), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                         output_params=["-crf", "12"], macro_block_size=8, quality=None)
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
