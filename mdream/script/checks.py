"""Cross-checks of a script: ids that refer to each other and files on disk.

They run on the raw parsed data, not on the validated model, so that a script with a typo in one
shot still gets its ids and face photos checked: the user sees every problem in one go. Every
accessor below tolerates values of the wrong type (pydantic reports those) and skips them.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from mdream.errors import InputError
from mdream.files import regular_file_problem, resolve_safely
from mdream.images import ImageSizeError, open_image
from mdream.models.bundle import bundle_candidates, bundled_names
from mdream.script.models import POSITIONS, default_shot_id
from mdream.script.source import FieldPath, SourceMap

# report(path, message, hint, key=False): records one problem located at `path`.
Report = Callable[..., None]


def did_you_mean(value: str, choices: list[str] | tuple[str, ...]) -> str | None:
    """'did you mean 'x'?' for the closest choice, or None when nothing is close."""
    matches = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{matches[0]}'?" if matches else None


def _as_id(value: object) -> str | None:
    """An id as the model will read it (numbers become text), or None if it is not an id at all."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _items(container: object, key: str) -> Iterator[tuple[int, dict]]:
    """(index, mapping) for each mapping in container[key] when that is a list."""
    if not isinstance(container, dict):
        return
    items = container.get(key)
    if not isinstance(items, list):
        return
    for index, item in enumerate(items):
        if isinstance(item, dict):
            yield index, item


def _line_of(source_map: SourceMap, path: FieldPath) -> str:
    location = source_map.locate(path)
    return f"line {location[0]}" if location else "earlier"


def _check_unique_ids(
    data: dict, section: str, noun: str, source_map: SourceMap, report: Report
) -> dict[str, int]:
    """Report repeated ids in data[section]; return id -> index of its first definition."""
    first: dict[str, int] = {}
    for index, item in _items(data, section):
        item_id = _as_id(item.get("id"))
        if item_id is None:
            continue
        if item_id in first:
            report(
                (section, index, "id"),
                f"duplicate {noun} id '{item_id}'",
                f"first defined at {_line_of(source_map, (section, first[item_id], 'id'))}; "
                f"each {noun} needs its own id",
            )
        else:
            first[item_id] = index
    return first


def check_image_file(relative: str, root: Path, noun: str) -> tuple[str, str] | None:
    """(message, hint) if a path named in the script is not a readable image inside `root`."""
    path = Path(relative)
    if path.is_absolute() or relative.startswith("~") or (len(relative) > 1 and relative[1] == ":"):
        return (
            f"{noun} path '{relative}' is absolute",
            "write paths relative to the script's folder (e.g. faces/mira_1.png), so the script "
            "and its photos can move together",
        )
    root = root.resolve()
    target = root / path
    resolved = resolve_safely(target)
    if resolved is None:
        problem = regular_file_problem(target)
        what = "is a symlink loop" if problem in (None, "a symlink loop") else f"is {problem}"
        return f"{noun} path '{relative}' {what}", "name one image file here"
    if not resolved.is_relative_to(root):
        # Without '..' the only way out is a symlink (of the file or of a folder on the way).
        how = "points" if ".." in path.parts else "is a symlink that points"
        return (
            f"{noun} path '{relative}' {how} outside the script's folder",
            f"copy the file into {root} (or a folder below it) and refer to it from there",
        )
    problem = regular_file_problem(target)
    if problem == "not found":
        hint = f"paths are relative to the script's folder ({root})"
        if target.parent.is_dir():
            siblings = sorted(p.name for p in target.parent.iterdir() if p.is_file())
            match = difflib.get_close_matches(target.name, siblings, n=1, cutoff=0.6)
            if match:
                hint = f"did you mean '{(path.parent / match[0]).as_posix()}'?"
        return f"{noun} file '{relative}' not found", hint
    if problem == "permission denied":
        return f"{noun} file '{relative}' cannot be read (permission denied)", "check the file's permissions"
    if problem is not None:
        return f"{noun} path '{relative}' is {problem}, not an image file", "name one image file here"
    try:
        with open_image(resolved, noun) as image:
            image.verify()  # structure and checksums
        with open_image(resolved, noun) as image:
            image.load()  # verify() does not decode pixels: catch truncated files too
    except ImageSizeError as error:  # too large (or empty): say so, from the header alone
        return f"{noun} file '{relative}' is {error.problem}", error.hint
    except InputError:
        return f"{noun} file '{relative}' is not an image", "use a PNG or JPEG photo"
    except Exception as error:  # PIL raises many types for bad data; any means "not a usable image"
        return f"{noun} file '{relative}' is damaged ({type(error).__name__})", "use a PNG or JPEG photo"
    return None


def _check_files(data: dict, root: Path, report: Report) -> None:
    checked: dict[str, tuple[str, str] | None] = {}

    def check(path: FieldPath, value: object, noun: str) -> None:
        if not isinstance(value, str) or not value.strip():
            return  # pydantic reports the type / emptiness
        value = value.strip()
        if value not in checked:
            checked[value] = check_image_file(value, root, noun)
        if checked[value] is not None:
            message, hint = checked[value]
            report(path, message, hint)

    for index, character in _items(data, "characters"):
        faces = character.get("faces")
        if isinstance(faces, list):
            for face_index, face in enumerate(faces):
                check(("characters", index, "faces", face_index), face, "face photo")
    for arc_index, arc in _items(data, "arcs"):
        for shot_index, shot in _items(arc, "shots"):
            if "keyframe" in shot:
                check(("arcs", arc_index, "shots", shot_index, "keyframe"), shot["keyframe"], "keyframe")
    style = data.get("style")
    if isinstance(style, dict) and isinstance(style.get("reference_frames"), list):
        for frame_index, frame in enumerate(style["reference_frames"]):
            check(("style", "reference_frames", frame_index), frame, "reference frame")


def _check_bundle(data: dict, root: Path, report: Report) -> None:
    """output.model_bundle names a bundled bundle or a folder holding bundle.yaml."""
    output = data.get("output")
    value = output.get("model_bundle") if isinstance(output, dict) else None
    if not isinstance(value, str) or not value.strip() or _control_character(value):
        return  # pydantic reports the type / emptiness; the text check reports control characters
    value = value.strip()
    candidates = bundle_candidates(value, root.resolve())
    if any((folder / "bundle.yaml").is_file() for folder in candidates):
        return
    known = bundled_names()
    if any(folder.is_dir() for folder in candidates[:-1]):
        message = f"model bundle folder '{value}' holds no bundle.yaml"
    else:
        message = f"model bundle '{value}' not found"
    suggestion = did_you_mean(value, known)
    report(
        ("output", "model_bundle"),
        message,
        suggestion
        or f"use a bundled name ({', '.join(known) or 'none installed'}) or a folder holding bundle.yaml "
        "(relative to the script's folder)",
    )


# Control characters other than tab, newline and carriage return (C0, DEL, C1): never part of
# a script's text, and an escape sequence (ESC, CSI) in a title would drive the user's terminal.
_CONTROL_RE = re.compile("[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f]")


def _control_character(text: str) -> str | None:
    found = _CONTROL_RE.search(text)
    return found.group() if found else None


def _check_text(data: object, report: Report) -> None:
    """Report every key or text value that holds a control character (walks the parsed data)."""
    stack: list[tuple[object, FieldPath]] = [(data, ())]
    seen: set[int] = set()
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            ch = _control_character(value)
            if ch is not None:
                report(
                    path,
                    f"text contains the control character U+{ord(ch):04X}",
                    "remove it; script text may hold tabs and line breaks, no other control characters",
                )
        elif isinstance(value, (dict, list)) and id(value) not in seen:
            seen.add(id(value))  # shared by YAML aliases: checked once
            if isinstance(value, dict):
                for key, item in value.items():
                    if isinstance(key, str) and _control_character(key) is not None:
                        ch = _control_character(key)
                        report(path + (key,), f"key contains the control character U+{ord(ch):04X}",
                               "remove it", key=True)
                        continue
                    stack.append((item, path + (key,)))
            else:
                stack.extend((item, path + (index,)) for index, item in enumerate(value))


def _unknown_ref_hint(value: str, known: dict[str, int], noun: str, section: str) -> str:
    suggestion = did_you_mean(value, list(known))
    if suggestion:
        return suggestion
    if not known:
        return f"no {noun}s are defined under `{section}`"
    return f"defined {noun}s: {', '.join(sorted(known))}"


def _check_shots(
    data: dict,
    characters: dict[str, int],
    scenes: dict[str, int],
    have_characters: bool,
    have_scenes: bool,
    source_map: SourceMap,
    report: Report,
) -> None:
    shot_ids: dict[str, FieldPath] = {}
    arc_ids: set[str] = set()
    for arc_index, arc in _items(data, "arcs"):
        arc_id = _as_id(arc.get("id"))
        if arc_id in arc_ids:
            arc_id = None  # a repeated arc id is reported once; don't repeat it for its default shot ids
        elif arc_id is not None:
            arc_ids.add(arc_id)
        for shot_index, shot in _items(arc, "shots"):
            here: FieldPath = ("arcs", arc_index, "shots", shot_index)
            explicit = _as_id(shot.get("id")) if "id" in shot else None
            shot_id = explicit or (default_shot_id(arc_id, shot_index + 1) if arc_id else None)
            if shot_id is not None:
                if shot_id in shot_ids:
                    hint = f"first used at {_line_of(source_map, shot_ids[shot_id])}; shot ids are unique across the script"
                    if explicit is None:
                        hint += f" (a shot without an id is named '<arc id>-<n:03d>', here '{shot_id}')"
                    report(here + ("id",) if explicit else here, f"duplicate shot id '{shot_id}'", hint)
                else:
                    shot_ids[shot_id] = here + ("id",) if explicit else here

            scene = _as_id(shot.get("scene"))
            if scene is not None and have_scenes and scene not in scenes:
                report(
                    here + ("scene",),
                    f"unknown scene '{scene}'",
                    _unknown_ref_hint(scene, scenes, "scene", "scenes"),
                )

            seen_cast: dict[str, int] = {}
            seen_positions: dict[str, str] = {}
            for cast_index, member in _items(shot, "characters"):
                at = here + ("characters", cast_index)
                member_id = _as_id(member.get("id"))
                if member_id is not None:
                    if have_characters and member_id not in characters:
                        report(
                            at + ("id",),
                            f"unknown character '{member_id}'",
                            _unknown_ref_hint(member_id, characters, "character", "characters"),
                        )
                    if member_id in seen_cast:
                        report(
                            at + ("id",),
                            f"character '{member_id}' appears twice in this shot",
                            "list each character once per shot",
                        )
                    else:
                        seen_cast[member_id] = cast_index
                position = member.get("position")
                if isinstance(position, str) and position in POSITIONS:
                    if position in seen_positions:
                        report(
                            at + ("position",),
                            f"two characters at position '{position}' in one shot "
                            f"('{seen_positions[position]}' and '{member_id}')",
                            "give each character its own position (left, center, right) or leave it out",
                        )
                    else:
                        seen_positions[position] = member_id or f"#{cast_index}"


def cross_check(data: dict, root: Path, source_map: SourceMap, report: Report) -> None:
    """Run every cross-check on raw script data; each problem goes to `report`."""
    characters = _check_unique_ids(data, "characters", "character", source_map, report)
    scenes = _check_unique_ids(data, "scenes", "scene", source_map, report)
    _check_unique_ids(data, "arcs", "arc", source_map, report)
    # Only report unknown references when the list they refer to was readable at all, and not
    # when it is missing because its key is misspelt (the unknown-key problem says it all).
    other_keys = [key for key in data if isinstance(key, str) and key != "characters"]

    def readable(section: str) -> bool:
        if section in data:
            return isinstance(data[section], list)
        return not difflib.get_close_matches(section, other_keys, n=1, cutoff=0.6)

    have_characters = readable("characters")
    have_scenes = isinstance(data.get("scenes"), list)  # scenes are required: missing is reported
    _check_shots(data, characters, scenes, have_characters, have_scenes, source_map, report)
    _check_files(data, root, report)
    _check_bundle(data, root, report)
    _check_text(data, report)
