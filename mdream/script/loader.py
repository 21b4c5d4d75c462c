"""`load_script`: read a YAML/JSON script, validate it, and report every problem at once.

Problems come from three places, all collected before raising one :class:`ScriptError`:
the parser (syntax, repeated keys), the pydantic models (types, ranges, unknown/missing keys)
and the cross-checks (ids, references, files). Each is located at `file:line:column` of the
offending node (of its key for an unknown key, of the enclosing mapping for a missing one).
"""

from __future__ import annotations

import reprlib
import types
import typing
from pathlib import Path

from pydantic import BaseModel, ValidationError

from mdream.errors import InputError, Problem, ScriptError
from mdream.files import NotARegularFile, open_regular_file
from mdream.script.checks import cross_check, did_you_mean
from mdream.script.models import CAMERAS, MAX_DURATION_S, POSITIONS, SCHEMA_VERSION, Script
from mdream.script.source import FieldPath, SourceMap, parse_document

MAX_SCRIPT_BYTES = 8 * 2**20
"""Largest script file read (8 MiB: about 10,000 shots of long descriptions)."""

# Messages for constrained numbers, whatever the pydantic error (type, range, multiple).
_NUMBER_RULES = {
    "duration": f"must be a number of seconds greater than 0 and at most {MAX_DURATION_S:g}",
    "width": "must be a whole number of pixels, a multiple of 8 from 32 to 4096",
    "height": "must be a whole number of pixels, a multiple of 8 from 32 to 4096",
    "fps": "must be a whole number of frames per second from 1 to 120",
    "clip_length": "must be a whole number of frames per clip from 2 to 256",
    "seed": "must be a whole number from 0 to 2**63 - 1",
}

# What each list that must not be empty is missing.
_EMPTY_LIST = {
    "arcs": ("the story is empty: `arcs` has no arcs", "add an arc with at least one shot"),
    "shots": ("this arc has no shots", "add at least one shot, or remove the arc"),
    "scenes": ("no scenes defined", "add at least one scene; every shot names one"),
    "faces": ("a character needs at least one face photo", "e.g. faces: [faces/mira_1.png]"),
}

_CHOICES = {"camera": CAMERAS, "position": POSITIONS}


def format_field_path(path: FieldPath) -> str:
    """('arcs', 0, 'shots', 2, 'camera') -> 'arcs[0].shots[2].camera'."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _unwrap(annotation: object) -> object:
    """The model (or list element model) behind Optional[...] / list[...] / Annotated[...]."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            annotation = options[0] if len(options) == 1 else annotation
            if len(options) != 1:
                return annotation
        else:
            return annotation


def model_at(path: FieldPath) -> type[BaseModel] | None:
    """The model class that validates the mapping at `path` of a script, if any."""
    current: object = Script
    for part in path:
        if isinstance(part, int):
            if typing.get_origin(current) is not list:
                return None
            current = _unwrap(typing.get_args(current)[0])
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = _unwrap(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 60, 60


def _short(value: object) -> str:
    """A short repr of an input value (bounded however large the value: it may be an alias bomb)."""
    text = _REPR.repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _as_number(text: str) -> int | float | None:
    """The number a quoted text spells ('64', '1e3'), or None."""
    try:
        number = float(text.strip())
    except ValueError:
        return None
    if number != number or number in (float("inf"), float("-inf")):
        return None
    return int(number) if number.is_integer() and abs(number) < 2**63 else number


def _choice_hint(value: object, choices: tuple[str, ...]) -> str:
    if isinstance(value, str):
        squashed = "".join(ch for ch in value.lower() if ch.isalpha())
        for choice in choices:
            if squashed == "".join(ch for ch in choice if ch.isalpha()):
                return f"did you mean '{choice}'?"
        suggestion = did_you_mean(value.lower(), choices)
        if suggestion:
            return suggestion
    return "one of " + ", ".join(choices)


def _problems_from_validation(error: ValidationError, file: str, source_map: SourceMap) -> list[Problem]:
    details = error.errors(include_url=False)

    # An unknown key that looks like a misspelt required one explains that missing key too.
    explained_missing: set[FieldPath] = set()
    suggestions: dict[FieldPath, str | None] = {}
    for detail in details:
        if detail["type"] == "extra_forbidden":
            loc = tuple(detail["loc"])
            model = model_at(loc[:-1])
            allowed = list(model.model_fields) if model else []
            match = did_you_mean(str(loc[-1]), allowed)
            suggestions[loc] = match
            if match:
                explained_missing.add(loc[:-1] + (match.split("'")[1],))

    problems: list[Problem] = []
    for detail in details:
        loc: FieldPath = tuple(detail["loc"])
        kind = detail["type"]
        value = detail.get("input")
        name = str(loc[-1]) if loc and isinstance(loc[-1], str) else ""
        hint: str | None = None
        at_key = False
        where = loc

        if kind == "missing":
            if loc in explained_missing:
                continue
            where = loc[:-1]
            message = f"missing required key '{name}'"
            model = model_at(loc[:-1])
            field = model.model_fields.get(name) if model else None
            hint = field.description if field else None
            if name == "schema_version":
                hint = f"add `schema_version: {SCHEMA_VERSION}` at the top of the script"
            elif name == "arcs":
                message = "the story is empty: missing required key 'arcs'"
                hint = "add `arcs:` with at least one arc of shots"
        elif kind == "extra_forbidden":
            at_key = True
            message = f"unknown key '{name}'"
            hint = suggestions.get(loc)
            if hint is None:
                model = model_at(loc[:-1])
                if model is not None:
                    hint = "allowed keys here: " + ", ".join(model.model_fields)
        elif name == "schema_version":
            message = f"unsupported schema_version {_short(value)}"
            hint = f"this version of mdream reads schema_version {SCHEMA_VERSION}"
        elif name in _CHOICES and kind in ("literal_error", "string_type"):
            message = f"{name} must be one of {', '.join(_CHOICES[name])}, got {_short(value)}"
            hint = _choice_hint(value, _CHOICES[name])
        elif name in _NUMBER_RULES and loc[0] in ("arcs", "output", "seed"):
            message = f"{name} {_NUMBER_RULES[name]}, got {_short(value)}"
            if isinstance(value, bool):
                hint = f"YAML reads yes/no/on/off/true/false as booleans, never numbers; write {name}: <number>"
            elif isinstance(value, str) and _as_number(value) is not None:
                hint = f"write the number without quotes, e.g. {name}: {_as_number(value)}"
                if "e" in value.lower():
                    hint += " (YAML reads 1e3 as text; 1.0e+3 is a number)"
            elif name == "duration" and isinstance(value, str):
                hint = "write seconds as a plain number, e.g. duration: 4.0"
            elif name in ("width", "height") and isinstance(value, int) and not isinstance(value, bool):
                nearest = min(4096, max(32, round(value / 8) * 8))
                hint = f"nearest valid size: {nearest}"
        elif kind == "too_short" and name in _EMPTY_LIST:
            message, hint = _EMPTY_LIST[name]
        elif kind == "string_too_short":
            message = f"{name or 'this text'} must not be empty"
        elif kind == "string_pattern_mismatch":
            message = f"{_short(value)} is not a valid id"
            slug = "".join(
                ch if ch.isalnum() or ch in "_-" else "_" for ch in str(value).strip().lower()
            ).strip("_")
            hint = "ids use lowercase letters, digits, '_' and '-'"
            if slug:
                hint += f", e.g. '{slug}'"
        elif kind == "string_too_long":
            message = f"{name} is too long (at most 64 characters)"
        else:
            expected = {
                "model_type": "a mapping of keys",
                "dict_type": "a mapping of keys",
                "list_type": "a list",
                "string_type": "text",
            }.get(kind)
            message = f"expected {expected}" if expected else detail["msg"]
            message += f", got {_short(value)}"
            if isinstance(value, bool) and kind == "string_type":
                hint = "YAML reads yes/no/on/off/true/false as booleans; put the text in quotes"
            elif kind in ("model_type", "dict_type") and isinstance(value, str) and "characters" in loc:
                hint = f"write each character as a mapping, e.g. {{id: {value}}}"
            elif kind == "list_type" and isinstance(value, str) and name == "characters" and "shots" in loc:
                hint = f"write a list of mappings, e.g. characters: [{{id: {value}}}]"
            elif kind == "list_type" and isinstance(value, str):
                hint = f"write a list, e.g. {name}: [{value}]"
            elif kind in ("model_type", "dict_type"):
                model = model_at(loc)
                if model is not None:
                    hint = "expected a mapping with keys: " + ", ".join(model.model_fields)

        location = source_map.locate(where, key=at_key)
        problems.append(
            Problem(
                file=file,
                line=location[0] if location else None,
                column=location[1] if location else None,
                field=format_field_path(loc),
                message=message,
                hint=hint,
            )
        )
    return problems


def _sorted(problems: list[Problem]) -> list[Problem]:
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=lambda p: (p.line is None, p.line or 0, p.column or 0))


def validate_script_text(text: str, *, file: str, root: Path, is_json: bool = False) -> Script:
    """Validate script text whose relative paths are relative to `root`; ScriptError lists all problems."""
    problems: list[Problem] = []

    def report(where: FieldPath, message: str, hint: str | None = None, *, key: bool = False) -> None:
        location = source_map.locate(where, key=key)
        problems.append(
            Problem(
                file=file,
                line=location[0] if location else None,
                column=location[1] if location else None,
                field=format_field_path(where),
                message=message,
                hint=hint,
            )
        )

    parsed = parse_document(text, is_json=is_json)
    source_map = parsed.source_map
    if parsed.syntax_error is not None:
        message, location, hint = parsed.syntax_error
        line, column = location if location else (None, None)
        field_name = format_field_path(parsed.syntax_field)
        raise ScriptError(problems=[Problem(file, line, column, field_name, message, hint)])
    data = parsed.data
    if data is None:
        raise ScriptError(
            problems=[
                Problem(
                    file,
                    1,
                    1,
                    "",
                    "the script is empty",
                    "start from examples/scripts/short.yaml, or run `mdream script-schema` for the format",
                )
            ]
        )
    if not isinstance(data, dict):
        got = {list: "a list", str: "a single text value"}.get(type(data), f"a {type(data).__name__}")
        raise ScriptError(
            problems=[
                Problem(
                    file,
                    *(source_map.locate(()) or (1, 1)),
                    "",
                    f"the top level of a script must be a mapping of keys, got {got}",
                    "start with `schema_version: 1`, `title: ...`, then characters, scenes, arcs",
                )
            ]
        )

    for path, location, first in source_map.duplicate_keys:
        problems.append(
            Problem(
                file,
                location[0],
                location[1],
                format_field_path(path),
                f"key '{path[-1]}' appears twice in this mapping",
                f"first at line {first[0]}; only the last value would count, keep one",
            )
        )

    script: Script | None = None
    try:
        script = Script.model_validate(data)
    except ValidationError as error:
        problems.extend(_problems_from_validation(error, file, source_map))
    except RecursionError:
        report((), "the script refers to itself through YAML aliases", "remove the recursive '*alias'")

    cross_check(data, root, source_map, report)

    if problems or script is None:
        raise ScriptError(problems=_sorted(problems))
    script._root = root.resolve()
    return script


def load_script(path: str | Path) -> Script:
    """Read and validate a script file (.yaml/.yml, or .json).

    Raises InputError if the file cannot be read, ScriptError (an InputError) listing every problem
    of an invalid script. Relative paths in the script are relative to the script's folder; the
    returned Script knows that folder (`script.root`, `script.resolve(path)`).
    """
    path = Path(path)
    try:
        with open_regular_file(path) as file:
            raw = file.read(MAX_SCRIPT_BYTES + 1)
    except NotARegularFile as error:
        if error.reason == "not found":
            raise InputError(
                f"script file not found: {path}",
                hint="check the path; example scripts are in examples/scripts/",
            ) from None
        if error.reason == "a folder":
            raise InputError(f"{path} is a folder, not a script file", hint="pass a .yaml or .json file") from None
        raise InputError(
            f"cannot read script {path}: it is {error.reason}", hint="pass a .yaml or .json file"
        ) from None
    except OSError as error:
        raise InputError(f"cannot read script {path}: {error.strerror or error}") from error
    if len(raw) > MAX_SCRIPT_BYTES:
        raise ScriptError(
            problems=[
                Problem(
                    str(path),
                    1,
                    1,
                    "",
                    f"the script is larger than {MAX_SCRIPT_BYTES // 2**20} MiB",
                    "a script holds text and file paths only; is this the right file?",
                )
            ]
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ScriptError(
            problems=[Problem(str(path), line, None, "", "the script is not UTF-8 text", "save it as UTF-8")]
        ) from None
    script = validate_script_text(
        text, file=str(path), root=path.parent, is_json=path.suffix.lower() == ".json"
    )
    script._source = path.resolve()
    return script
