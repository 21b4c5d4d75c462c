"""Training settings: config dataclasses, YAML recipes, saved settings of a resumed run.

A trainer's settings are one dataclass (litgpt style: a docstring under each field, which becomes its
``--help``); a field may itself be a dataclass (a section, e.g. ``toy_loss``), whose fields are still plain
command-line options. A *recipe* is a YAML file of those settings, nested like the dataclass::

    trainer: tokenizer          # optional: which `mdream train` command the recipe is for
    steps: 20000
    toy_loss:
      character_weight: 4

Packaged recipes live in ``mdream/assets/recipes/`` and are named without their ``.yaml``. Precedence, lowest
first: the dataclass defaults, a resumed run's saved ``train_config.json``, the recipe, the options typed on the
command line.

Settings are addressed by *path*: ``steps``, ``toy_loss.character_weight``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, ClassVar

from mdream.cache import atomic_write_bytes
from mdream.errors import InputError
from mdream.training.common import console, field_docs

RECIPES_DIR = Path(__file__).resolve().parent.parent / "assets" / "recipes"


class ConfigValueError(InputError):
    """A setting with a value its trainer refuses; ``path`` names it (``toy_loss.character_weight``)."""

    def __init__(self, path: str, message: str, hint: str | None = None):
        super().__init__(message, hint)
        self.path = path


@dataclasses.dataclass(frozen=True)
class Removed:
    """A setting that no longer exists: the value whose behaviour the code keeps, and why the rest went."""

    kept: Any
    reason: str


class Settings:
    """Mixin of the config dataclasses: their removed settings and their value checks."""

    removed: ClassVar[dict[str, Removed]] = {}
    """Settings this config had and dropped, by name (a saved run that holds one still resumes when it holds the kept value)."""
    help_panel: ClassVar[str] = ""
    """The ``--help`` section of the fields this class declares."""

    def check(self) -> None:
        """Raise ``ConfigValueError`` for a value the trainer cannot use."""


def option_name(path: str) -> str:
    """The command-line option of a setting: its last name, dashed (``toy_loss.character_weight`` -> ``--character-weight``)."""
    return "--" + path.rsplit(".", 1)[-1].replace("_", "-")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def settings_fields(cls: type, prefix: str = "") -> list[tuple[str, Any, dataclasses.Field]]:
    """Every leaf setting of ``cls`` as (path, type, field), sections expanded in place."""
    hints = _hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if is_section(tp):
            out.extend(settings_fields(tp, f"{prefix}{f.name}."))
        else:
            out.append((prefix + f.name, tp, f))
    return out


def settings_docs(cls: type, prefix: str = "") -> dict[str, str]:
    """The docstring of every leaf setting of ``cls``, by path (``--help`` shows them)."""
    docs = field_docs(cls)
    out: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        if is_section(tp):
            out.update(settings_docs(tp, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = docs.get(f.name, "")
    return out


def settings_panels(cls: type, prefix: str = "") -> dict[str, str]:
    """The ``--help`` section of every leaf setting, by path: the ``help_panel`` of the class declaring it first."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        if is_section(tp):
            out.update(settings_panels(tp, f"{prefix}{f.name}."))
            continue
        owner = next((k for k in reversed(cls.__mro__) if f.name in k.__dict__.get("__annotations__", {})), cls)
        out[prefix + f.name] = owner.__dict__.get("help_panel") or getattr(cls, "help_panel", "") or "Settings"
    return out


def flatten(config: Any) -> dict[str, Any]:
    """{path: value} of every leaf setting."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update({f"{f.name}.{k}": v for k, v in flatten(value).items()})
        else:
            out[f.name] = value
    return out


def with_values(config: Any, values: Mapping[str, Any]) -> Any:
    """A copy of ``config`` with the settings at these paths replaced."""
    direct = {k: v for k, v in values.items() if "." not in k}
    nested: dict[str, dict[str, Any]] = {}
    for k, v in values.items():
        if "." in k:
            head, rest = k.split(".", 1)
            nested.setdefault(head, {})[rest] = v
    for head, sub in nested.items():
        direct[head] = with_values(getattr(config, head), sub)
    return dataclasses.replace(config, **direct)


def _coerce(value: Any, tp: Any, where: str, path: str) -> Any:
    """``value`` as the setting's type; a ConfigValueError naming ``where`` and the key otherwise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        tp = args[0]
    ok = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, int | float) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str | int | float) and not isinstance(value, bool))
    )
    if not ok:
        name = getattr(tp, "__name__", str(tp))
        raise ConfigValueError(path, f"{where}: '{path}' must be {'a' if name != 'int' else 'an'} {name}, "
                                     f"got {value!r} ({type(value).__name__}).",
                               hint=f"See `{option_name(path)}` in `mdream train ... --help`.")
    if tp is float:
        return float(value)
    if tp is str:
        return str(value)
    return value


def removed_settings(cls: type) -> dict[str, Removed]:
    """The removed settings of ``cls`` and its sections, by path."""
    out = {k: v for k, v in getattr(cls, "removed", {}).items()}
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        if is_section(tp):
            out.update({f"{f.name}.{k}": v for k, v in removed_settings(tp).items()})
    return out


def values_from_mapping(cls: type, data: Mapping[str, Any], where: str, *, saved_run: bool = False) -> dict[str, Any]:
    """{path: value} of a nested mapping of ``cls``'s settings (a recipe, or a run's saved settings).

    Unknown keys, wrong types and removed settings are ``InputError``s naming ``where`` and the key. A run's saved
    settings (``saved_run``) may also be flat (sections' fields at the top level), and a removed
    setting holding the value whose behaviour the code kept is dropped with a warning, so such a run still resumes.
    """
    leaves = {path: tp for path, tp, _ in settings_fields(cls)}
    by_leaf = {path.rsplit(".", 1)[-1]: path for path in leaves}
    removed = removed_settings(cls)
    removed_by_leaf = {path.rsplit(".", 1)[-1]: path for path in removed}
    sections = {path.split(".", 1)[0] for path in leaves if "." in path}
    out: dict[str, Any] = {}

    def visit(mapping: Mapping[str, Any], prefix: str) -> None:
        for key, value in mapping.items():
            path = prefix + str(key)
            if path in sections and isinstance(value, Mapping):
                visit(value, path + ".")
                continue
            if path not in leaves and saved_run and not prefix and key in by_leaf:
                path = by_leaf[key]  # a flat record of a sectioned setting
            if path not in removed and saved_run and not prefix and key in removed_by_leaf:
                path = removed_by_leaf[key]
            if path in removed:
                gone = removed[path]
                if saved_run and value == gone.kept:
                    console.print(f"[yellow]{where}: dropping '{key}: {value}' (the setting was removed; "
                                  f"{gone.reason}); training behaves as it did with that value[/]", highlight=False)
                    continue
                if saved_run:
                    raise InputError(
                        f"{where}: this run was trained with '{key}: {value}', a setting that no longer exists "
                        f"({gone.reason}); only '{gone.kept}' is supported now, so the run cannot continue as it was.",
                        hint="Start a new run (--resume never or another --out), or continue it with the mdream "
                             "version that started it.")
                raise InputError(f"{where}: '{path}' is no longer a setting ({gone.reason}).",
                                 hint=f"Delete the line; training behaves as '{key}: {gone.kept}' did.")
            if path in sections:
                raise InputError(f"{where}: '{path}' is a section: it holds settings, not a value.",
                                 hint=f"Write its settings indented under '{path}:'.")
            if path not in leaves:
                if not prefix and key in by_leaf:
                    hint = f"'{key}' belongs in the '{by_leaf[key].split('.')[0]}:' section."
                else:
                    close = difflib.get_close_matches(path, list(leaves), n=3)
                    hint = (f"Did you mean {', '.join(repr(c) for c in close)}? " if close else "") + \
                        "The settings are the options of `mdream train ... --help` (underscores for dashes)."
                raise InputError(f"{where}: unknown setting '{path}'.", hint=hint)
            out[path] = _coerce(value, leaves[path], where, path)

    if not isinstance(data, Mapping):
        raise InputError(f"{where}: expected a mapping of settings, got {type(data).__name__}.")
    visit(data, "")
    return out


def recipe_path(name: str) -> Path:
    """A recipe file: a path to a YAML file, or the name of a packaged recipe."""
    path = Path(name)
    if path.is_file():
        return path
    packaged = RECIPES_DIR / f"{name}.yaml"
    if "/" not in name and packaged.is_file():
        return packaged
    names = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
    raise InputError(f"--config {name}: no such recipe file, and no packaged recipe of that name.",
                     hint=f"Packaged recipes: {names}.")


def load_recipe(cls: type, name: str, trainer: str) -> tuple[Path, dict[str, Any]]:
    """The recipe file named by ``name`` and its settings as {path: value}, each checked against ``cls``."""
    import yaml

    path = recipe_path(name)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: not a readable YAML recipe ({exc}).") from exc
    data = dict(data or {}) if isinstance(data, Mapping) else data
    if isinstance(data, dict):
        meant_for = data.pop("trainer", trainer)
        if meant_for != trainer:
            raise InputError(f"{path}: a recipe for `mdream train {meant_for}`, not `mdream train {trainer}`.",
                             hint=f"Use a {trainer} recipe, or `mdream train {meant_for} --config {name}`.")
    values = values_from_mapping(cls, data, str(path))
    try:
        check_config(with_values(cls(), values))
    except ConfigValueError as err:
        raise InputError(f"{path}: '{err.path}': {err.message}", hint=err.hint or "Fix the value in the recipe.") from None
    except InputError as err:
        raise InputError(f"{path}: {err.message}", hint=err.hint or "Fix the value in the recipe.") from None
    return path, values


def resumed_config(cls: type, saved_path: Path, config: Any, given: Collection[str] | None = None) -> Any:
    """A resumed run's settings: the saved ones, overridden by the settings given now.

    ``given`` holds their paths (the CLI passes the options typed on its command line and a recipe's settings, so
    one set back to its default, ``--max-minutes 0``, still overrides); without it (a Python caller), the
    settings of ``config`` not at their defaults override.
    """
    if not saved_path.is_file():
        return config
    try:
        saved = json.loads(saved_path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{saved_path}: unreadable saved settings ({exc}).",
                         hint="Restore the file, or start a new run (--resume never).") from exc
    current = flatten(config)
    if given is None:
        defaults = flatten(cls())
        given = [k for k, v in current.items() if v != defaults[k]]
    values = values_from_mapping(cls, saved, str(saved_path), saved_run=True)
    return with_values(cls(), values | {k: current[k] for k in given})


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: Any, path: Path) -> None:
    atomic_write_bytes(path, (json.dumps(config_to_dict(config), indent=2, sort_keys=True) + "\n").encode())


def check_config(config: Any) -> None:
    """``config.check()`` and its sections' checks."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and hasattr(value, "check"):
            value.check()
    config.check()
