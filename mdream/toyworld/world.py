"""The toy world's catalogue: vocabularies, characters and scenes, deterministic by seed.

Every identity is a combination of discrete attributes, each drawn with a distinct colour or
shape, so that telling two characters apart takes more than one colour (skin, hair colour and
style, eye colour, outfit colour and pattern, height). Some characters are built as "siblings"
of another that differ in exactly one attribute: they are the hard cases for identity metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# --- shot vocabularies (the order defines the label indices) ---------------------------------
CAMERAS: tuple[str, ...] = ("wide", "medium", "close-up")
POSITIONS: tuple[str, ...] = ("left", "center", "right")
ACTIONS: tuple[str, ...] = ("stand", "walk", "wave", "jump", "sit")
EXPRESSIONS: tuple[str, ...] = ("neutral", "happy", "sad", "surprised", "angry")

# --- character attribute vocabularies: name -> RGB (or a scale for heights) ------------------
SKIN_TONES: dict[str, tuple[int, int, int]] = {
    "pale": (247, 221, 203),
    "light": (232, 188, 152),
    "tan": (204, 148, 102),
    "brown": (148, 98, 62),
    "dark": (92, 60, 40),
}
HAIR_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (28, 24, 24),
    "brown": (115, 66, 30),
    "blonde": (240, 205, 80),
    "red": (205, 55, 25),
    "white": (232, 232, 236),
    "blue": (45, 100, 225),
    "pink": (245, 105, 185),
}
HAIR_STYLES: tuple[str, ...] = ("short", "long", "bun", "spiky", "ponytail", "curly")
EYE_COLOURS: dict[str, tuple[int, int, int]] = {
    "brown": (100, 55, 20),
    "blue": (40, 110, 235),
    "green": (40, 170, 60),
    "grey": (135, 140, 150),
    "amber": (225, 150, 20),
}
OUTFIT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 40),
    "orange": (245, 130, 20),
    "yellow": (245, 215, 40),
    "green": (40, 160, 60),
    "teal": (20, 160, 160),
    "blue": (35, 75, 210),
    "purple": (130, 50, 180),
    "pink": (240, 120, 190),
    "white": (238, 238, 238),
    "black": (35, 35, 40),
}
OUTFIT_PATTERNS: tuple[str, ...] = ("plain", "stripes", "checks", "dots", "sash")
HEIGHTS: dict[str, float] = {"short": 0.78, "medium": 0.89, "tall": 1.0}

# The attribute fields of CharacterSpec, in a fixed order (used for single-attribute pairs).
ATTRIBUTES: tuple[str, ...] = ("skin", "hair_colour", "hair_style", "eye_colour", "outfit_colour",
                               "outfit_pattern", "height")
_ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "skin": tuple(SKIN_TONES),
    "hair_colour": tuple(HAIR_COLOURS),
    "hair_style": HAIR_STYLES,
    "eye_colour": tuple(EYE_COLOURS),
    "outfit_colour": tuple(OUTFIT_COLOURS),
    "outfit_pattern": OUTFIT_PATTERNS,
    "height": tuple(HEIGHTS),
}

CHARACTER_NAMES: tuple[str, ...] = (
    "Ada", "Ben", "Cleo", "Dev", "Elsa", "Finn", "Gus", "Hana", "Ivo", "Juno", "Kai", "Lena",
    "Milo", "Nora", "Otto", "Pia", "Quin", "Rosa", "Sami", "Tess", "Uma", "Vik", "Wren", "Xavi",
    "Yara", "Zeno", "Abel", "Bea", "Cruz", "Dina", "Emil", "Fay",
)

TIMES_OF_DAY: tuple[str, ...] = ("dawn", "day", "dusk", "night")

# --- hidden per-episode state: what a film keeps constant but its script never states ----------
PALETTES: tuple[str, ...] = ("rgb", "gbr", "brg")
"""Scene-level hidden attribute: the sky (or wall) colour with its channels rotated (index 0 is the
scene's catalogue colour). Drawn once per scene per episode; no description mentions it."""
TROUSER_COLOURS: dict[str, tuple[int, int, int]] = {
    "navy": (55, 58, 80),
    "khaki": (205, 178, 112),
    "crimson": (168, 28, 48),
}
"""Character-level hidden attribute: the trousers' colour, drawn once per character per episode.
Descriptions and face photos never show it; close-ups frame the faces and leave the legs out."""
HIDDEN_ATTRIBUTES: dict[str, tuple[str, ...]] = {"palette": PALETTES, "trousers": tuple(TROUSER_COLOURS)}
"""The hidden attributes by name -> their values (label index = position): `palette` belongs to a
scene, `trousers` to a character."""


@dataclass(frozen=True)
class CharacterSpec:
    """One identity of the toy world."""

    id: str
    """Lowercase id, unique in the world (the script's character id)."""
    name: str
    """Display name."""
    skin: str
    """Key of SKIN_TONES."""
    hair_colour: str
    """Key of HAIR_COLOURS."""
    hair_style: str
    """One of HAIR_STYLES."""
    eye_colour: str
    """Key of EYE_COLOURS."""
    outfit_colour: str
    """Key of OUTFIT_COLOURS."""
    outfit_pattern: str
    """One of OUTFIT_PATTERNS."""
    height: str
    """Key of HEIGHTS."""

    def attributes(self) -> tuple[str, ...]:
        """The identity as a tuple of attribute values, in ATTRIBUTES order."""
        return tuple(getattr(self, a) for a in ATTRIBUTES)

    def describe(self) -> str:
        """The descriptor text of this character (the script's `description`)."""
        pattern = "" if self.outfit_pattern == "plain" else f" {_PATTERN_WORDS[self.outfit_pattern]}"
        return (f"{self.name}, a {self.height} person with {self.skin} skin, {self.hair_colour} "
                f"{_HAIR_WORDS[self.hair_style]} hair, {self.eye_colour} eyes and a "
                f"{self.outfit_colour}{pattern} outfit")


_HAIR_WORDS = {"short": "short", "long": "long", "bun": "bun-tied", "spiky": "spiky",
               "ponytail": "ponytailed", "curly": "curly"}
_PATTERN_WORDS = {"stripes": "striped", "checks": "checked", "dots": "polka-dot", "sash": "sashed"}


@dataclass(frozen=True)
class SceneSpec:
    """One location of the toy world, drawn procedurally."""

    id: str
    """Lowercase id, unique in the world (the script's scene id)."""
    name: str
    """Display name."""
    indoor: bool
    """Indoor scenes have a wall and floor instead of sky and ground."""
    sky: tuple[int, int, int]
    """Sky (outdoor) or wall (indoor) colour at daylight."""
    ground: tuple[int, int, int]
    """Ground or floor colour."""
    accent: tuple[int, int, int]
    """Colour of the texture strokes and some props."""
    wall_texture: str
    """Texture of the upper part: plain, stripes, bricks, panels, stars, tiles."""
    ground_texture: str
    """Texture of the lower part: grass, sand, waves, checker, planks, snow, cobbles, rug."""
    props: tuple[tuple[str, float], ...]
    """(prop kind, x position in background units 0..1)."""
    time_of_day: str
    """One of TIMES_OF_DAY."""
    horizon: float = 0.55
    """Height of the horizon / floor line in wide shots (fraction of the frame from the top)."""

    @property
    def palette(self) -> dict[str, tuple[int, int, int]]:
        """The scene's colours by role."""
        return {"sky": self.sky, "ground": self.ground, "accent": self.accent}

    @property
    def texture(self) -> tuple[str, str]:
        """(upper texture, lower texture)."""
        return (self.wall_texture, self.ground_texture)

    def describe(self) -> str:
        """The scene's description text (the script's `description`)."""
        props = sorted({p for p, _ in self.props})
        listing = ", ".join(p.replace("_", " ") for p in props)
        where = "inside" if self.indoor else "outdoors"
        when = "by day" if self.time_of_day == "day" else f"at {self.time_of_day}"
        return f"the {self.name} {when}, {where}, with {listing}"


# id, name, indoor, sky, ground, accent, wall texture, ground texture, prop kinds, time, horizon
_SCENE_TEMPLATES: tuple[tuple, ...] = (
    ("park", "park", False, (135, 200, 245), (90, 175, 70), (50, 120, 40), "plain", "grass",
     ("tree", "tree", "bench", "sun"), "day", 0.55),
    ("beach", "beach", False, (110, 200, 250), (240, 220, 150), (40, 140, 210), "plain", "sand",
     ("sea", "umbrella", "sun"), "day", 0.5),
    ("harbor", "harbor", False, (250, 150, 110), (60, 90, 150), (30, 50, 100), "plain", "waves",
     ("boat", "crates", "sun"), "dusk", 0.55),
    ("street", "city street", False, (25, 30, 70), (95, 95, 105), (160, 70, 50), "bricks", "cobbles",
     ("lamp", "house", "lamp"), "night", 0.6),
    ("kitchen", "kitchen", True, (250, 245, 215), (200, 60, 60), (120, 180, 200), "tiles", "checker",
     ("window", "table", "cupboard"), "day", 0.62),
    ("classroom", "classroom", True, (215, 225, 190), (170, 115, 60), (40, 90, 60), "plain", "planks",
     ("board", "desk", "clock"), "day", 0.62),
    ("forest", "forest", False, (245, 190, 200), (40, 110, 50), (20, 70, 30), "plain", "grass",
     ("pine", "pine", "pine", "pine"), "dawn", 0.6),
    ("desert", "desert", False, (150, 210, 250), (225, 180, 95), (190, 130, 60), "plain", "sand",
     ("cactus", "cactus", "sun"), "day", 0.55),
    ("village", "snowy village", False, (150, 120, 190), (240, 245, 250), (170, 190, 220), "plain",
     "snow", ("house", "snowman"), "dusk", 0.58),
    ("library", "library", True, (120, 75, 45), (110, 30, 40), (220, 180, 90), "stripes", "rug",
     ("bookshelf", "bookshelf", "lamp"), "night", 0.62),
    ("castle", "castle hall", True, (140, 140, 150), (90, 80, 75), (170, 30, 40), "bricks", "planks",
     ("banner", "torch", "banner"), "dusk", 0.62),
    ("station", "space station", True, (70, 80, 95), (45, 50, 60), (60, 220, 230), "panels", "checker",
     ("porthole", "console"), "night", 0.62),
    ("market", "market", False, (140, 205, 250), (200, 170, 130), (230, 120, 40), "plain", "cobbles",
     ("stall", "stall", "crates"), "day", 0.55),
)


@dataclass(frozen=True)
class World:
    """A deterministic catalogue of characters and scenes."""

    seed: int
    """The seed that made it."""
    characters: tuple[CharacterSpec, ...]
    """The cast, in index order (the label index of a character is its position here)."""
    scenes: tuple[SceneSpec, ...]
    """The locations, in index order."""
    single_attribute_pairs: tuple[tuple[str, str, str], ...] = ()
    """(character id, character id, the one attribute in which they differ)."""
    character_index: dict[str, int] = field(default_factory=dict, compare=False)
    """Character id -> index into characters."""
    scene_index: dict[str, int] = field(default_factory=dict, compare=False)
    """Scene id -> index into scenes."""

    def __post_init__(self) -> None:
        self.character_index.update({c.id: i for i, c in enumerate(self.characters)})
        self.scene_index.update({s.id: i for i, s in enumerate(self.scenes)})

    def character(self, character_id: str) -> CharacterSpec:
        """The character with this id (KeyError if none)."""
        return self.characters[self.character_index[character_id]]

    def lookalikes(self, character_id: str) -> tuple[str, ...]:
        """The characters that differ from this one in a single attribute (its siblings; often none)."""
        return tuple(b if character_id == a else a for a, b, _ in self.single_attribute_pairs if character_id in (a, b))

    def scene(self, scene_id: str) -> SceneSpec:
        """The scene with this id (KeyError if none)."""
        return self.scenes[self.scene_index[scene_id]]


def make_world(seed: int = 0, n_characters: int = 28, n_sibling_pairs: int = 10) -> World:
    """Build the world's catalogue; the same seed always gives the same world.

    `n_characters - n_sibling_pairs` identities are drawn at random (all distinct); each of the
    remaining `n_sibling_pairs` copies an earlier one and changes a single attribute, cycling
    through the attributes so that every attribute has such a pair.
    """
    if not 2 <= n_characters <= len(CHARACTER_NAMES):
        raise ValueError(f"n_characters must be in 2..{len(CHARACTER_NAMES)}, got {n_characters}")
    n_sibling_pairs = min(n_sibling_pairs, n_characters // 2)
    rng = np.random.default_rng([seed, 0x70F])
    names = list(CHARACTER_NAMES[:n_characters])
    attrs: list[tuple[str, ...]] = []
    seen: set[tuple[str, ...]] = set()
    n_random = n_characters - n_sibling_pairs
    while len(attrs) < n_random:
        candidate = tuple(str(rng.choice(_ATTRIBUTE_VALUES[a])) for a in ATTRIBUTES)
        if candidate not in seen:
            seen.add(candidate)
            attrs.append(candidate)
    pairs: list[tuple[int, int, str]] = []
    for k in range(n_sibling_pairs):
        attribute = ATTRIBUTES[k % len(ATTRIBUTES)]
        a_pos = ATTRIBUTES.index(attribute)
        for _ in range(100):
            base = int(rng.integers(n_random))
            value = str(rng.choice(_ATTRIBUTE_VALUES[attribute]))
            candidate = attrs[base][:a_pos] + (value,) + attrs[base][a_pos + 1:]
            if candidate not in seen:
                break
        seen.add(candidate)
        pairs.append((base, len(attrs), attribute))
        attrs.append(candidate)
    # Shuffle the order so siblings are not all at the end (labels stay deterministic).
    order = rng.permutation(n_characters)
    position_of = {int(old): new for new, old in enumerate(order)}
    characters = tuple(
        CharacterSpec(names[new].lower(), names[new], *attrs[int(old)]) for new, old in enumerate(order)
    )
    single_pairs = tuple(
        (characters[position_of[a]].id, characters[position_of[b]].id, attribute) for a, b, attribute in pairs
    )
    scenes = []
    for sid, name, indoor, sky, ground, accent, wall_tex, ground_tex, prop_kinds, tod, horizon in _SCENE_TEMPLATES:
        # Spread the props across the background with a little seeded variation.
        n = len(prop_kinds)
        xs = (np.arange(n) + 0.5) / n + rng.uniform(-0.08, 0.08, n) / max(n, 1)
        props = tuple((kind, float(np.round(x, 3))) for kind, x in zip(prop_kinds, xs, strict=True))
        scenes.append(SceneSpec(sid, name, indoor, sky, ground, accent, wall_tex, ground_tex, props, tod, horizon))
    return World(seed=seed, characters=characters, scenes=tuple(scenes), single_attribute_pairs=single_pairs)
