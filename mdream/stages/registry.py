"""The pipeline definition: one ordered list of stage classes that everything else derives from.

The CLI's stage commands (``mdream encode|keyframes|render|video``), the names ``--from-stage`` and
``--until`` accept (and their help text), ``mdream status`` and the runner all read this list. A
stage class joins it with :func:`register_stage`; its place in the pipeline is the order of
registration (``mdream/stages/definitions.py`` registers the built-in stages top to bottom).

Importing this module is cheap (no torch, no models): the CLI reads it at start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, TypeVar

from mdream.errors import InputError

if TYPE_CHECKING:
    from mdream.stages.pipeline import Stage

S = TypeVar("S", bound="type[Stage]")

#: Modules whose import registers the built-in stages (imported on first use of the pipeline).
BUILTIN_MODULES = ("mdream.stages.definitions",)

_PIPELINE: list[type[Stage]] = []


def register_stage(cls: S) -> S:
    """Class decorator: append a :class:`~mdream.stages.pipeline.Stage` subclass to the pipeline.

    Checks what the runner relies on: a valid, unique name; upstream stages registered before it;
    a chained stage produces one shot at a time (each shot reads the one before it).
    """
    from mdream.cache.keys import check_stage_name

    check_stage_name(cls.name)
    known = [s.name for s in _PIPELINE]
    if cls.name in known:
        raise ValueError(f"stage {cls.name!r} is registered twice")
    missing = [up for up in cls.upstream_stages if up not in known]
    if missing:
        raise ValueError(f"stage {cls.name!r}: upstream stage(s) {missing} must be registered before it")
    if cls.chained and cls.batch_size != 1:
        raise ValueError(f"stage {cls.name!r} is chained, so its batch_size must be 1")
    if cls.per_movie and cls.chained:
        raise ValueError(f"stage {cls.name!r}: a per-movie step cannot be chained")
    _PIPELINE.append(cls)
    return cls


def pipeline() -> tuple[type[Stage], ...]:
    """Every registered stage class, in pipeline order."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    return tuple(_PIPELINE)


def stage_names() -> tuple[str, ...]:
    """Every step's name in order (per-shot stages and per-movie steps): what ``--from-stage`` takes."""
    return tuple(cls.name for cls in pipeline())


def shot_stage_names() -> tuple[str, ...]:
    """The per-shot stages' names in order (one CLI command and one ``status`` column each)."""
    return tuple(cls.name for cls in pipeline() if not cls.per_movie)


def names_text() -> str:
    """``encode, keyframes, render, export or video``: for help texts and hints."""
    names = stage_names()
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)


def check_name(name: str, flag: str) -> str:
    """``name`` if it is a registered stage, else an InputError naming ``flag`` and the stages."""
    if name not in stage_names():
        raise InputError(f"Unknown stage {name!r} for {flag}.", hint=f"stages are: {', '.join(stage_names())}")
    return name


def new_stages(until: str | None = None) -> list[Stage]:
    """Fresh instances of the pipeline's stages (stages hold loaded models), up to ``until`` included."""
    classes = pipeline()
    if until is not None:
        check_name(until, "--until")
        classes = classes[: stage_names().index(until) + 1]
    return [cls() for cls in classes]
