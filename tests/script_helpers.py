"""Helpers for the script tests: a small valid YAML script as text (so tests can edit it line by
line and know where each line is), its face photos, and shortcuts to the problems it yields."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from mdream.errors import Problem, ScriptError
from mdream.script import load_script

BASE_SCRIPT = """\
schema_version: 1
title: Test Movie
seed: 3
characters:
  - id: ada
    name: Ada
    description: a woman with red hair
    faces: [faces/ada.png]
  - id: bo
    name: Bo
    description: a man with a blue coat
    faces: [faces/bo_1.png, faces/bo_2.png]
scenes:
  - id: harbor
    description: a harbor at dusk
    elements: {props: [boat], lighting: warm, time_of_day: dusk}
  - id: forest
    description: a forest at noon
arcs:
  - id: act1
    shots:
      - scene: harbor
        characters:
          - {id: ada, action: walks, position: left}
        identifier: Ada arrives
        descriptor: Wide shot of Ada on the pier.
        camera: wide
        duration: 4.0
      - id: talk
        scene: harbor
        characters:
          - {id: ada, position: left}
          - {id: bo, expression: happy, position: right}
        identifier: Ada meets Bo
        descriptor: Medium shot of Ada and Bo talking.
        camera: medium
        duration: 3.0
  - id: act2
    title: The Forest
    shots:
      - scene: forest
        characters:
          - {id: bo, action: runs}
        identifier: Bo runs
        descriptor: Close-up of Bo running between trees.
        camera: close-up
        duration: 2.5
output:
  width: 64
  height: 64
  fps: 8
  clip_length: 8
"""

FACE_FILES = ("faces/ada.png", "faces/bo_1.png", "faces/bo_2.png")


def write_png(path: Path, colour: tuple[int, int, int] = (200, 150, 120), size: int = 16) -> None:
    """A small solid-colour PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)


def write_script_text(folder: Path, text: str = BASE_SCRIPT, name: str = "script.yaml") -> Path:
    """Write `text` as a script in `folder`, with the face photos BASE_SCRIPT names."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, face in enumerate(FACE_FILES):
        write_png(folder / face, (60 * index, 100, 150))
    path = folder / name
    path.write_text(text)
    return path


def edit(text: str, old: str, new: str) -> str:
    """Replace exactly one occurrence of `old` (fails loudly if the fixture changed)."""
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
    return text.replace(old, new)


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based number of the line holding the `occurrence`-th line containing `needle`."""
    found = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(found) >= occurrence, f"{needle!r} not found {occurrence} times"
    return found[occurrence - 1]


def problems_of(path: Path) -> list[Problem]:
    """The problems that loading `path` reports (fails if it loads)."""
    with pytest.raises(ScriptError) as caught:
        load_script(path)
    return caught.value.problems


def the_problem(problems: list[Problem], field: str) -> Problem:
    """The single problem reported for `field`."""
    matching = [p for p in problems if p.field == field]
    assert len(matching) == 1, f"expected one problem at {field}, got: {[str(p) for p in problems]}"
    return matching[0]
