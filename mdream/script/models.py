"""Pydantic models of the multimodal movie script (schema_version 1).

The models are the single source of truth for the format: `load_script` validates with them,
`script_json_schema` exports them for editors, and docs/script-format.md describes them. Each field
carries a one-line description because it becomes the JSON Schema's documentation.

Checks that need more than one field (ids that refer to each other, files on disk) live in
:mod:`mdream.script.checks`, so that they can run on the parts of a script that parsed even when
other parts did not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr
from pydantic_core import PydanticCustomError

SCHEMA_VERSION = 1
"""The only script schema version this mdream reads."""

ID_PATTERN = r"^[a-z0-9_-]+$"
"""Ids are lowercase so that they are safe as file names and easy to type."""

CAMERAS = ("wide", "medium", "close-up")
POSITIONS = ("left", "center", "right")

MAX_DURATION_S = 600.0
"""Longest allowed shot; anything longer is almost certainly a typo (e.g. milliseconds)."""

Id = Annotated[str, Field(pattern=ID_PATTERN, min_length=1, max_length=64)]
Text = Annotated[str, Field(min_length=1)]
RelativePath = Annotated[str, Field(min_length=1)]


def _exact_int(value: object) -> object:
    """Refuse what ``Literal[1]`` would take for 1: ``true`` and ``1.0``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise PydanticCustomError("int_type", "must be the whole number 1")
    return value


class _Strict(BaseModel):
    """Shared config: unknown keys are errors, numbers in text fields (e.g. `title: 1984`) are text.

    Numbers are strict (each number field says ``strict=True``): a bool or a text is never a
    number (``duration: true`` or ``height: '64'`` are errors); an int is fine where a float is
    expected.
    """

    model_config = ConfigDict(
        extra="forbid",
        coerce_numbers_to_str=True,
        str_strip_whitespace=True,
        allow_inf_nan=False,
        frozen=True,
    )


class Style(_Strict):
    """The look of the whole movie."""

    text: Text = Field(description="Style words added to every shot, e.g. 'storybook, soft light'.")
    reference_frames: list[RelativePath] = Field(
        default_factory=list,
        description="Optional few-shot example frames (image paths relative to the script's folder).",
    )


class Character(_Strict):
    """One recurring character, identified by face photos and a descriptor text."""

    id: Id = Field(description="Unique id used by shots, [a-z0-9_-]+, e.g. 'mira'.")
    name: Text = Field(description="Display name, e.g. 'Mira'.")
    description: Text = Field(description="Descriptor text of the character's look, used in every shot.")
    faces: list[RelativePath] = Field(
        min_length=1, description="One or more face photos (paths relative to the script's folder)."
    )


class SceneElements(_Strict):
    """Optional structured details of a scene."""

    props: list[Text] = Field(default_factory=list, description="Objects present in the scene.")
    lighting: Text | None = Field(default=None, description="Lighting, e.g. 'warm' or 'neon'.")
    time_of_day: Text | None = Field(default=None, description="Time of day, e.g. 'dusk'.")


class Scene(_Strict):
    """One place where shots happen."""

    id: Id = Field(description="Unique id used by shots, [a-z0-9_-]+, e.g. 'harbor'.")
    description: Text = Field(description="Descriptor text of the place.")
    elements: SceneElements | None = Field(
        default=None, description="Optional props, lighting and time of day."
    )


class ShotCharacter(_Strict):
    """A character present in a shot."""

    id: Id = Field(description="Id of a character defined under `characters`.")
    action: Text | None = Field(default=None, description="What the character does, free text.")
    expression: Text | None = Field(default=None, description="Facial expression, free text.")
    position: Literal["left", "center", "right"] | None = Field(
        default=None, description="Where the character stands in the frame: left, center or right."
    )


class Shot(_Strict):
    """One shot: a keyframe and the clip that grows from it."""

    id: Id | None = Field(
        default=None, description="Optional unique id; defaults to '<arc id>-<n:03d>' (1-based in the arc)."
    )
    scene: Id = Field(description="Id of a scene defined under `scenes`.")
    characters: list[ShotCharacter] = Field(
        default_factory=list, description="Characters present in the shot (zero or more)."
    )
    identifier: Text = Field(description="Short structural line, e.g. 'Mira arrives at the harbor'.")
    descriptor: Text = Field(description="Detailed description of what the shot shows.")
    camera: Literal["wide", "medium", "close-up"] = Field(description="Framing: wide, medium or close-up.")
    duration: float = Field(strict=True, gt=0, le=MAX_DURATION_S, description="Length in seconds, 0 < duration <= 600.")
    keyframe: RelativePath | None = Field(
        default=None,
        description="Optional given keyframe image (a storyboard frame): encoded instead of predicted.",
    )


class Arc(_Strict):
    """A story arc (act): an ordered list of shots."""

    id: Id = Field(description="Unique arc id, [a-z0-9_-]+, e.g. 'act1'.")
    title: Text | None = Field(default=None, description="Optional arc title.")
    shots: list[Shot] = Field(min_length=1, description="The arc's shots, in playing order.")


SAMPLERS = ("ddim", "ddpm", "euler", "dpmpp")


class Sampling(_Strict):
    """How the renderer samples keyframes; a field left out keeps the model bundle's tuned setting."""

    steps: int | None = Field(default=None, strict=True, ge=1, le=1000, description="Denoising steps per keyframe.")
    guidance_scale: float | None = Field(
        default=None, strict=True, ge=0, le=30, description="Classifier-free guidance scale (1 = no guidance)."
    )
    identity_guidance: float | None = Field(
        default=None, strict=True, ge=0, le=30, description="Extra guidance toward the cast's faces (0 = off)."
    )
    sampler: Literal[SAMPLERS] | None = Field(default=None, description="Sampler: ddim, ddpm, euler or dpmpp.")
    temperature: float | None = Field(
        default=None, strict=True, ge=0, le=10,
        description="Sampling temperature of the keyframe tokens the AR model predicts (0 = the most likely; default 1).",
    )

    def overrides(self) -> dict:
        """The renderer's settings given in the script (for its cache keys: a script that sets none keeps its keys)."""
        return self.model_dump(exclude_none=True, exclude={"temperature"})


class OutputSettings(_Strict):
    """Size and timing of the generated movie and which model bundle draws it."""

    width: int = Field(default=64, strict=True, ge=32, le=4096, multiple_of=8, description="Frame width in pixels.")
    height: int = Field(default=64, strict=True, ge=32, le=4096, multiple_of=8, description="Frame height in pixels.")
    fps: int = Field(default=8, strict=True, ge=1, le=120, description="Frames per second of the movie.")
    clip_length: int = Field(default=8, strict=True, ge=2, le=256, description="Frames per generated clip.")
    transition: Literal["cut", "crossfade"] = Field(
        default="cut", description="How one shot's clip gives way to the next in the movie: cut or crossfade."
    )
    model_bundle: Text = Field(default="toy", description="Bundled model name (e.g. 'toy') or a folder path.")
    sampling: Sampling = Field(
        default_factory=Sampling, description="Keyframe sampling: steps, guidance, sampler (default: the bundle's)."
    )


class Script(_Strict):
    """A multimodal movie script: cast with face photos, scenes, and arcs of shots."""

    schema_version: Annotated[Literal[1], BeforeValidator(_exact_int)] = Field(description="Version of this format; must be 1.")
    title: Text = Field(description="Title of the movie.")
    seed: int = Field(
        default=0, strict=True, ge=0, lt=2**63, description="Random seed; the same script and seed give the same movie."
    )
    style: Style | None = Field(default=None, description="Optional style text and reference frames.")
    characters: list[Character] = Field(
        default_factory=list, description="The cast; each character has face photos."
    )
    scenes: list[Scene] = Field(min_length=1, description="The places where shots happen.")
    arcs: list[Arc] = Field(min_length=1, description="Story arcs (acts), each an ordered list of shots.")
    output: OutputSettings = Field(
        default_factory=OutputSettings, description="Frame size, frame rate, clip length and model bundle."
    )

    _root: Path = PrivateAttr(default_factory=Path.cwd)
    _source: Path | None = PrivateAttr(default=None)

    @property
    def root(self) -> Path:
        """The folder that relative paths (faces, reference frames) are resolved against."""
        return self._root

    @property
    def source(self) -> Path | None:
        """The file this script was loaded from, if any."""
        return self._source

    def resolve(self, path: str | Path) -> Path:
        """Absolute path of a file named in the script (relative to the script's folder)."""
        return (self._root / path).resolve()

    def character(self, character_id: str) -> Character:
        """The character with this id (KeyError if none)."""
        for character in self.characters:
            if character.id == character_id:
                return character
        raise KeyError(character_id)

    def scene(self, scene_id: str) -> Scene:
        """The scene with this id (KeyError if none)."""
        for scene in self.scenes:
            if scene.id == scene_id:
                return scene
        raise KeyError(scene_id)

    def face_paths(self, character_id: str) -> list[Path]:
        """Resolved face photo paths of one character."""
        return [self.resolve(face) for face in self.character(character_id).faces]


def default_shot_id(arc_id: str, number: int) -> str:
    """Id of a shot without one: '<arc id>-<n:03d>', n counted from 1 within the arc."""
    return f"{arc_id}-{number:03d}"


def script_json_schema() -> dict:
    """JSON Schema (draft 2020-12) of the script format, for editors and `mdream script-schema`."""
    schema = Script.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **{k: v for k, v in schema.items() if k != "title"},
        "title": "mdream script (schema_version 1)",
    }
