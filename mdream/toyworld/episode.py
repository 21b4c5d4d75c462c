"""Shots and episodes: what is on screen, and a story structure that tests long-term memory.

An episode is a list of arcs; each arc stays in one scene for several shots. A small recurring
cast moves through the arcs: characters enter (walking in), leave, and at least one comes back
after a long absence (20+ shots) when the episode is long enough, so long-term identity
consistency can be measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from mdream.toyworld.world import ACTIONS, CAMERAS, EXPRESSIONS, PALETTES, POSITIONS, TROUSER_COLOURS, World


@dataclass(frozen=True)
class CastMember:
    """One character in one shot."""

    character_id: str
    """A world character id."""
    position: str
    """One of POSITIONS."""
    action: str
    """One of ACTIONS."""
    expression: str
    """One of EXPRESSIONS."""
    trousers: int = 0
    """Hidden: index into TROUSER_COLOURS (the character's for the whole episode)."""


@dataclass(frozen=True)
class ShotSpec:
    """Everything that defines one shot's ground truth."""

    scene_id: str
    """A world scene id."""
    cast: tuple[CastMember, ...]
    """0..3 characters at distinct positions (make_episode lists them left to right)."""
    camera: str
    """One of CAMERAS."""
    palette: int = 0
    """Hidden: index into PALETTES (the scene's for the whole episode)."""

    def __post_init__(self) -> None:
        positions = [m.position for m in self.cast]
        if len(self.cast) > 3 or len(set(positions)) != len(positions):
            raise ValueError(f"a shot has at most 3 characters at distinct positions, got {positions}")
        if self.camera not in CAMERAS:
            raise ValueError(f"camera must be one of {CAMERAS}, got {self.camera!r}")
        for m in self.cast:
            if (m.position not in POSITIONS or m.action not in ACTIONS or m.expression not in EXPRESSIONS
                    or not 0 <= m.trousers < len(TROUSER_COLOURS)):
                raise ValueError(f"bad cast member {m}")
        if not 0 <= self.palette < len(PALETTES):
            raise ValueError(f"palette must be in 0..{len(PALETTES) - 1}, got {self.palette}")

    def member_at(self, position: str) -> CastMember | None:
        """The cast member standing at `position`, if any."""
        for m in self.cast:
            if m.position == position:
                return m
        return None

    @property
    def character_ids(self) -> tuple[str, ...]:
        """The ids of the cast, left to right."""
        return tuple(m.character_id for m in self.cast)


@dataclass
class Episode:
    """An ordered list of shots grouped into arcs."""

    seed: int
    """The seed that made it."""
    shots: list[ShotSpec]
    """The shots, in story order."""
    arcs: list[tuple[str, int, int]] = field(default_factory=list)
    """(arc id, first shot index, end shot index exclusive); they tile the shots."""
    hidden: dict[str, dict[str, int]] = field(default_factory=dict)
    """The hidden state: {"palette": {scene id: index}, "trousers": {character id: index}}, constant
    over the episode and never written in its script (see world.HIDDEN_ATTRIBUTES)."""

    def shot_ids(self) -> list[str]:
        """Per shot the script id "<arc id>-<n:03d>" (1-based within the arc)."""
        ids: list[str] = []
        for arc_id, start, end in self.arcs:
            ids.extend(f"{arc_id}-{n + 1:03d}" for n in range(end - start))
        return ids

    def appearances(self, character_id: str) -> list[int]:
        """Indices of the shots in which the character appears."""
        return [i for i, s in enumerate(self.shots) if character_id in s.character_ids]

    def longest_gap(self, character_id: str) -> int:
        """The largest difference between consecutive appearances (0 if fewer than two)."""
        idx = self.appearances(character_id)
        return max((b - a for a, b in zip(idx, idx[1:], strict=False)), default=0)


def _sort_cast(cast: list[CastMember]) -> tuple[CastMember, ...]:
    return tuple(sorted(cast, key=lambda m: POSITIONS.index(m.position)))


_POSITION_ORDER_BY_COUNT = {1: ("center",), 2: ("left", "right"), 3: ("left", "center", "right")}


def make_episode(world: World, seed: int, n_shots: int, main_cast: int = 5) -> Episode:
    """Generate an episode of `n_shots` shots; the same (world, seed, n_shots) gives the same episode.

    Arcs last 4 to 9 shots in one scene. Each arc has an active group of 1..3 characters from a
    recurring main cast (plus the occasional extra); within the arc members enter (walking) and
    may leave before its end. One main character is present in the first arc, absent for 20+
    shots, and returns in the first arc that starts 20+ shots later: always when n_shots >= 40
    (arcs are at most 9 shots), often from 30.
    """
    if n_shots < 1:
        raise ValueError(f"n_shots must be >= 1, got {n_shots}")
    rng = np.random.default_rng([seed, world.seed, 0xE915])
    n_chars = len(world.characters)
    cast_ids = [world.characters[int(i)].id for i in rng.permutation(n_chars)]
    main = cast_ids[:min(main_cast, n_chars)]
    # Half the episodes include a single-attribute pair among the main cast: the hard case.
    if world.single_attribute_pairs and rng.random() < 0.5:
        a, b, _ = world.single_attribute_pairs[int(rng.integers(len(world.single_attribute_pairs)))]
        main = [a, b] + [c for c in main if c not in (a, b)][:max(len(main) - 2, 0)]
    extras = [c for c in cast_ids if c not in main]

    # 1. Arcs: lengths 4..9, each in a scene different from the previous arc's (scenes recur).
    arcs: list[tuple[str, int, int]] = []
    start = 0
    scene_of_arc: list[str] = []
    n_scenes = len(world.scenes)
    while start < n_shots:
        length = int(min(rng.integers(4, 10), n_shots - start))
        arcs.append((f"arc{len(arcs) + 1}", start, start + length))
        prev = scene_of_arc[-1] if scene_of_arc else None
        choices = [s.id for s in world.scenes if s.id != prev] if n_scenes > 1 else [world.scenes[0].id]
        scene_of_arc.append(str(rng.choice(choices)))
        start += length

    # 2. Active group per arc. The protagonist appears in most arcs; the "returner" is forced to
    # leave after the first arc and come back in the first arc that starts 20+ shots later.
    protagonist = main[0]
    returner = main[1] if len(main) > 1 else None
    return_arc = None
    if returner is not None and n_shots >= 30:
        first_end = arcs[0][2]
        return_arc = next((k for k, (_, s, _) in enumerate(arcs) if s >= first_end + 20), None)
    groups: list[list[str]] = []
    for k in range(len(arcs)):
        group: list[str] = []
        if rng.random() < 0.75:
            group.append(protagonist)
        others = [c for c in main[1:] if c != returner or return_arc is None]
        size = int(rng.integers(1, 4)) - len(group)
        if size > 0:
            pool = others + ([str(rng.choice(extras))] if extras and rng.random() < 0.3 else [])
            pick = rng.choice(len(pool), size=min(size, len(pool)), replace=False) if pool else []
            group.extend(pool[int(i)] for i in pick)
        if returner is not None and return_arc is not None and k in (0, return_arc):
            group = [returner] + [c for c in group if c != returner][:2]
        if not group:
            group = [protagonist]
        groups.append(group[:3])

    # 3. Shots: members of the group enter one after another and some leave before the end.
    shots: list[ShotSpec] = []
    for (_, s0, s1), scene_id, group in zip(arcs, scene_of_arc, groups, strict=True):
        length = s1 - s0
        positions = list(_POSITION_ORDER_BY_COUNT[len(group)])
        rng.shuffle(positions)
        position_of = dict(zip(group, positions, strict=True))
        # Shot 0 of an arc is often an establishing shot; the first member enters at 0 or 1.
        empty_start = length >= 5 and rng.random() < 0.35
        enter = {}
        leave = {}
        for j, c in enumerate(group):
            enter[c] = (1 if empty_start else 0) + (0 if j == 0 else int(rng.integers(0, max(length - 2, 1))))
            enter[c] = min(enter[c], length - 1)
            # Some members leave early (the shot after their last one).
            leave[c] = length if rng.random() < 0.7 else int(rng.integers(enter[c] + 1, length + 1))
        expression_of = {c: str(rng.choice(EXPRESSIONS)) for c in group}
        for i in range(length):
            cast = []
            for c in group:
                if enter[c] <= i < leave[c]:
                    action = "walk" if i == enter[c] and i > 0 else str(rng.choice(ACTIONS))
                    if rng.random() < 0.3:  # expressions change now and then
                        expression_of[c] = str(rng.choice(EXPRESSIONS))
                    cast.append(CastMember(c, position_of[c], action, expression_of[c]))
            if i == 0:
                camera = "wide"
            else:
                # Close-ups are for one or two faces; three at close-up would overlap.
                weights = np.array([0.35, 0.4, 0.25]) if len(cast) < 3 else np.array([0.5, 0.5, 0.0])
                camera = CAMERAS[int(rng.choice(3, p=weights))]
            shots.append(ShotSpec(scene_id, _sort_cast(cast), camera))

    _cover_vocabularies(shots, rng)
    hidden = draw_hidden_state(world, seed)
    shots = [apply_hidden_state(shot, hidden) for shot in shots]
    return Episode(seed=seed, shots=shots, arcs=arcs, hidden=hidden)


def draw_hidden_state(world: World, seed: int) -> dict[str, dict[str, int]]:
    """Each scene's palette and each character's trousers for one episode, uniformly, from their own
    random stream (so the story of an episode does not depend on them)."""
    rng = np.random.default_rng([seed, world.seed, 0x41DE])
    return {
        "palette": {s.id: int(rng.integers(len(PALETTES))) for s in world.scenes},
        "trousers": {c.id: int(rng.integers(len(TROUSER_COLOURS))) for c in world.characters},
    }


def apply_hidden_state(shot: ShotSpec, hidden: dict[str, dict[str, int]]) -> ShotSpec:
    """The shot with the episode's hidden variants of its scene and cast."""
    cast = tuple(replace(m, trousers=hidden["trousers"].get(m.character_id, 0)) for m in shot.cast)
    return replace(shot, cast=cast, palette=hidden["palette"].get(shot.scene_id, 0))


def episode_seed(seed: int, episode: int) -> int:
    """The make_episode seed of episode number `episode` of a dataset written with `seed`."""
    return seed * 1_000_003 + episode


def _cover_vocabularies(shots: list[ShotSpec], rng: np.random.Generator) -> None:
    """Make sure every action and camera occurs (when the episode has room), editing shots in place."""
    if len(shots) < 15:
        return
    used_actions = {m.action for s in shots for m in s.cast}
    for action in ACTIONS:
        if action in used_actions:
            continue
        candidates = [i for i, s in enumerate(shots) if s.cast]
        if not candidates:
            return
        i = candidates[int(rng.integers(len(candidates)))]
        s = shots[i]
        cast = list(s.cast)
        cast[0] = CastMember(cast[0].character_id, cast[0].position, action, cast[0].expression)
        shots[i] = ShotSpec(s.scene_id, tuple(cast), s.camera)
        used_actions = {m.action for s in shots for m in s.cast}
    used_cameras = {s.camera for s in shots}
    for camera in CAMERAS:
        if camera in used_cameras:
            continue
        candidates = [i for i, s in enumerate(shots) if len(s.cast) < 3 or camera != "close-up"]
        i = candidates[int(rng.integers(len(candidates)))]
        shots[i] = ShotSpec(shots[i].scene_id, shots[i].cast, camera)
        used_cameras = {s.camera for s in shots}


def shot_labels(world: World, shot: ShotSpec) -> dict[str, object]:
    """Integer labels for learners: scene, per-position character, action, expression and trousers
    (-1 empty), camera, palette. Trousers are labelled even in close-ups, which do not show them."""
    chars = np.full(3, -1, dtype=np.int64)    # [3] left, center, right
    actions = np.full(3, -1, dtype=np.int64)  # [3]
    expressions = np.full(3, -1, dtype=np.int64)
    trousers = np.full(3, -1, dtype=np.int64)
    for m in shot.cast:
        p = POSITIONS.index(m.position)
        chars[p] = world.character_index[m.character_id]
        actions[p] = ACTIONS.index(m.action)
        expressions[p] = EXPRESSIONS.index(m.expression)
        trousers[p] = m.trousers
    return {
        "scene": world.scene_index[shot.scene_id],
        "chars": chars,
        "camera": CAMERAS.index(shot.camera),
        "actions": actions,
        "expressions": expressions,
        "palette": shot.palette,
        "trousers": trousers,
    }


_CAMERA_WORDS = {"wide": "Wide shot", "medium": "Medium shot", "close-up": "Close-up"}
_ACTION_WORDS = {"stand": "stands", "walk": "walks", "wave": "waves", "jump": "jumps", "sit": "sits"}
_EXPRESSION_WORDS = {"neutral": "calm", "happy": "smiling", "sad": "sad", "surprised": "surprised",
                     "angry": "angry"}


def _join(names: list[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def shot_text(world: World, shot: ShotSpec) -> tuple[str, str]:
    """(identifier, descriptor): a short structural line and a detailed description of the shot."""
    scene = world.scene(shot.scene_id)
    names = [world.character(m.character_id).name for m in shot.cast]
    if names:
        identifier = f"{_join(names)} in the {scene.name}"
    else:
        identifier = f"The {scene.name}, empty"
    parts = [f"{_CAMERA_WORDS[shot.camera]} of {scene.describe()}."]
    for m in shot.cast:
        c = world.character(m.character_id)
        parts.append(f"On the {m.position}, {c.describe()}, {_ACTION_WORDS[m.action]}, "
                     f"{_EXPRESSION_WORDS[m.expression]}.")
    if not shot.cast:
        parts.append("Nobody is there.")
    return identifier, " ".join(parts)
