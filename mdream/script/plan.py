"""`plan_script`: flatten a validated Script into the ordered list of shots the stages work on."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from mdream.script.models import (
    Character,
    OutputSettings,
    Scene,
    Script,
    ShotCharacter,
    Style,
    default_shot_id,
)


@dataclass(frozen=True)
class PlannedShot:
    """One shot in global playing order, with its defaults filled in."""

    index: int
    """0-based position in the whole movie (keyframes/0000.png is index 0)."""
    id: str
    """The shot's id, or its default '<arc id>-<n:03d>'."""
    arc_id: str
    """Id of the arc the shot belongs to."""
    scene_id: str
    """Id of the shot's scene."""
    cast: tuple[ShotCharacter, ...]
    """Characters present, in script order."""
    identifier: str
    """Short structural line."""
    descriptor: str
    """Detailed description."""
    camera: str
    """wide, medium or close-up."""
    duration: float
    """Seconds."""
    keyframe: Path | None
    """A given keyframe image (resolved path), encoded instead of predicted; None to predict it."""
    scene: Scene = field(repr=False, compare=False)
    """The shot's scene (for inputs_for_cache)."""
    characters: tuple[Character, ...] = field(repr=False, compare=False)
    """The cast's Character entries, aligned with `cast`."""

    @property
    def cast_ids(self) -> tuple[str, ...]:
        """Ids of the characters present."""
        return tuple(member.id for member in self.cast)

    def inputs_for_cache(self) -> dict:
        """Everything about this shot that a stage's output depends on, as JSON-able data.

        Editing one shot's text changes only that shot's dict; editing a scene or a character's
        description changes the dicts of the shots that use it. Not included (stages add them to
        their keys themselves): the shot's position in the movie, the seed, the output settings,
        and face photo contents (see Plan.character_inputs_for_cache).
        """
        elements = self.scene.elements
        return {
            "scene": {
                "id": self.scene.id,
                "description": self.scene.description,
                "elements": elements.model_dump(mode="json") if elements is not None else None,
            },
            "cast": [
                {
                    "id": member.id,
                    "action": member.action,
                    "expression": member.expression,
                    "position": member.position,
                    "name": character.name,
                    "description": character.description,
                }
                for member, character in zip(self.cast, self.characters, strict=True)
            ],
            "identifier": self.identifier,
            "descriptor": self.descriptor,
            "camera": self.camera,
            "duration": self.duration,
        }


@dataclass(frozen=True)
class Plan:
    """A script flattened into shots in playing order; what every stage iterates over."""

    title: str
    """Movie title."""
    seed: int
    """Script seed."""
    shots: tuple[PlannedShot, ...]
    """All shots in playing order (arc by arc)."""
    characters: dict[str, Character]
    """Character id -> Character, in script order."""
    scenes: dict[str, Scene]
    """Scene id -> Scene, in script order."""
    output: OutputSettings
    """Frame size, fps, clip length, model bundle."""
    style: Style | None = None
    """Optional style text and reference frames."""
    root: Path = field(default_factory=Path.cwd)
    """Folder that the script's relative paths are resolved against."""

    @property
    def total_duration(self) -> float:
        """Running time in seconds (sum of shot durations)."""
        return float(sum(shot.duration for shot in self.shots))

    def shot(self, shot_id: str) -> PlannedShot:
        """The planned shot with this id (KeyError if none)."""
        for shot in self.shots:
            if shot.id == shot_id:
                return shot
        raise KeyError(shot_id)

    def face_paths(self, character_id: str) -> tuple[Path, ...]:
        """Resolved face photo paths of one character."""
        return tuple((self.root / face).resolve() for face in self.characters[character_id].faces)

    def character_inputs_for_cache(self, character_id: str) -> dict:
        """JSON-able inputs of a per-character artifact: descriptor text and the faces' content hashes."""
        character = self.characters[character_id]
        return {
            "id": character.id,
            "name": character.name,
            "description": character.description,
            "faces": [
                {"path": face, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
                for face, path in zip(character.faces, self.face_paths(character_id), strict=True)
            ],
        }


def plan_script(script: Script) -> Plan:
    """Order the shots of a validated script (arc by arc) and fill in default shot ids."""
    characters = {character.id: character for character in script.characters}
    scenes = {scene.id: scene for scene in script.scenes}
    shots: list[PlannedShot] = []
    for arc in script.arcs:
        for number, shot in enumerate(arc.shots, start=1):
            shots.append(
                PlannedShot(
                    index=len(shots),
                    id=shot.id or default_shot_id(arc.id, number),
                    arc_id=arc.id,
                    scene_id=shot.scene,
                    cast=tuple(shot.characters),
                    identifier=shot.identifier,
                    descriptor=shot.descriptor,
                    camera=shot.camera,
                    duration=shot.duration,
                    keyframe=script.resolve(shot.keyframe) if shot.keyframe else None,
                    scene=scenes[shot.scene],
                    characters=tuple(characters[member.id] for member in shot.characters),
                )
            )
    return Plan(
        title=script.title,
        seed=script.seed,
        shots=tuple(shots),
        characters=characters,
        scenes=scenes,
        output=script.output,
        style=script.style,
        root=script.root,
    )
