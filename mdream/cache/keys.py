"""Content keys for cached artifacts.

An artifact's key is the sha256 of a canonical JSON encoding of everything its content depends on:
the stage's name and code version, the model bundle's identity, the script fields the stage reads,
the seed and the keys of its upstream artifacts (in order: for the autoregressive keyframe stage the
previous shot's key is upstream, so an edit invalidates every later shot and nothing before it).

Canonical means: object keys sorted, no whitespace, UTF-8, floats written with Python's shortest
round-trip ``repr`` (stable across platforms and Python versions), tuples encoded as lists. Values
JSON cannot represent exactly (bytes, numpy scalars, NaN, non-string dict keys, ...) raise a
``TypeError`` naming where they are, instead of being coerced into something that could collide.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

#: Bumped only if the encoding below changes (which invalidates every cache).
KEY_SCHEMA_VERSION = 1

#: Stage names become directory names, so they are restricted to a safe alphabet.
STAGE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

#: Stage names that would collide with the store's own folders (``root/runs/`` holds manifests).
RESERVED_STAGE_NAMES = frozenset({"runs"})


def check_stage_name(stage: object) -> str:
    """Return ``stage`` if it is a valid stage name, else raise (TypeError for a non-str, ValueError)."""
    if not isinstance(stage, str):
        raise TypeError(f"stage must be a str, got {type(stage).__name__}")
    if not STAGE_NAME_RE.match(stage) or stage in RESERVED_STAGE_NAMES:
        raise ValueError(
            f"invalid stage name {stage!r}: use 1-64 characters from [a-z0-9_-], starting with a letter "
            f"or digit, and not one of {sorted(RESERVED_STAGE_NAMES)}"
        )
    return stage


def canonical_json_value(value: Any, where: str = "value") -> Any:
    """Return ``value`` as plain JSON types (dict/list/str/int/float/bool/None), or raise TypeError.

    ``where`` names the value in error messages, e.g. ``inputs['shot']['duration']``.
    """
    # bool before int: bool is an int subclass, and JSON keeps true distinct from 1.
    if value is None or type(value) is bool:
        return value
    if isinstance(value, str):
        return str.__str__(value)  # a plain str even for str subclasses (StrEnum)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where}: {value!r} is not representable in JSON; use a finite number or None")
        return float(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(
                    f"{where}: dict key {k!r} of type {type(k).__name__} is not a str; JSON object keys "
                    f"must be strings (convert them explicitly so that 1 and '1' cannot collide)"
                )
            out[str.__str__(k)] = canonical_json_value(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray, memoryview)):
        return [canonical_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    hint = "hash it first and pass the hex digest" if isinstance(value, (bytes, bytearray)) else (
        "convert it to a plain Python value (e.g. float(x), int(x), str(path), model.model_dump(mode='json'))"
    )
    raise TypeError(f"{where}: value of type {type(value).__module__}.{type(value).__qualname__} "
                    f"is not JSON-able; {hint}")


def canonical_json(value: Any, where: str = "value") -> str:
    """The canonical JSON text of ``value``: sorted keys, no whitespace, UTF-8, stable float repr."""
    plain = canonical_json_value(value, where)
    return json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def artifact_key(
    stage: str,
    stage_version: str,
    bundle_id: str,
    inputs: Mapping[str, Any],
    seed: int,
    upstream: Sequence[str],
) -> str:
    """The content key (64 hex chars) of one stage output.

    Every argument changes the key; the order of dict entries in ``inputs`` does not; the order of
    ``upstream`` does (the keyframe chain conditions on its history in order).
    """
    check_stage_name(stage)
    for name, text in (("stage_version", stage_version), ("bundle_id", bundle_id)):
        if not isinstance(text, str):
            raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    if not isinstance(inputs, Mapping):
        raise TypeError(f"inputs must be a mapping, got {type(inputs).__name__}")
    if type(seed) is bool or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if isinstance(upstream, (str, bytes)) or not isinstance(upstream, Sequence):
        raise TypeError(f"upstream must be a sequence of keys (str), got {type(upstream).__name__}")
    for i, up in enumerate(upstream):
        if not isinstance(up, str):
            raise TypeError(f"upstream[{i}] must be a str key, got {type(up).__name__}")
    payload = {
        "key_schema": KEY_SCHEMA_VERSION,
        "stage": stage,
        "stage_version": stage_version,
        "bundle_id": bundle_id,
        "inputs": canonical_json_value(inputs, "inputs"),
        "seed": int(seed),
        "upstream": list(upstream),
    }
    text = canonical_json(payload, where="artifact_key")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
