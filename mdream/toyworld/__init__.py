"""The toy movie world: a procedural world with ground truth for training and measuring mdream.

- `make_world(seed)`: the catalogue of characters and scenes.
- `make_episode(world, seed, n_shots)`: shots with story structure (arcs, entrances, long gaps).
- `render_keyframe`, `render_keyframe_with_figures`, `render_clip`, `render_face_photo`, `face_boxes`, `head_mask`, `lookalike_mask`, `lookalike_shares`, `trousers_shares`: numpy
  rendering.
- `shot_text`, `shot_labels`: the texts and integer labels of a shot.
- `write_script`: a real mdream script + face photos + the ground-truth movie folder.
- `write_dataset`, `ToyDataset`: a training set streamed to disk in shards, and its reader.
"""

from __future__ import annotations

from mdream.toyworld.episode import (
    CastMember,
    Episode,
    ShotSpec,
    episode_seed,
    make_episode,
    shot_labels,
    shot_text,
)
from mdream.toyworld.render import (
    FACE_SIZE,
    SIZES,
    face_boxes,
    head_mask,
    lookalike_mask,
    lookalike_shares,
    render_clip,
    render_face_photo,
    render_keyframe,
    render_keyframe_with_figures,
    trousers_shares,
)
from mdream.toyworld.script_writer import (
    script_dict,
    write_groundtruth,
    write_independent_groundtruth,
    write_script,
)
from mdream.toyworld.world import (
    ACTIONS,
    ATTRIBUTES,
    CAMERAS,
    EXPRESSIONS,
    EYE_COLOURS,
    HAIR_COLOURS,
    HAIR_STYLES,
    HEIGHTS,
    OUTFIT_COLOURS,
    OUTFIT_PATTERNS,
    POSITIONS,
    SKIN_TONES,
    TIMES_OF_DAY,
    CharacterSpec,
    SceneSpec,
    World,
    make_world,
)

# The dataset module imports torch (slow); load it on first use.
_LAZY = {"write_dataset", "ToyDataset", "DatasetInfo", "ShardShuffleSampler", "read_info"}


def __getattr__(name: str):
    if name in _LAZY:
        from mdream.toyworld import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'mdream.toyworld' has no attribute {name!r}")


__all__ = [
    "DatasetInfo", "ShardShuffleSampler", "ToyDataset", "read_info", "script_dict", "write_dataset", "write_groundtruth",
    "write_script", "write_independent_groundtruth",
    "ACTIONS", "ATTRIBUTES", "CAMERAS", "EXPRESSIONS", "EYE_COLOURS", "FACE_SIZE", "HAIR_COLOURS",
    "HAIR_STYLES", "HEIGHTS", "OUTFIT_COLOURS", "OUTFIT_PATTERNS", "POSITIONS", "SIZES", "SKIN_TONES",
    "TIMES_OF_DAY", "CastMember", "CharacterSpec", "Episode", "SceneSpec", "ShotSpec", "World",
    "episode_seed", "face_boxes", "head_mask", "lookalike_mask", "lookalike_shares", "make_episode", "make_world", "render_clip", "render_face_photo", "render_keyframe",
    "render_keyframe_with_figures",
    "shot_labels", "shot_text", "trousers_shares",
]
