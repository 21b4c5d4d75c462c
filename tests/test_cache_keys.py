"""artifact_key: stable, sensitive to every argument, insensitive to dict order."""

from __future__ import annotations

import enum
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdream.cache import artifact_key, canonical_json

REPO = Path(__file__).resolve().parents[1]

BASE = dict(
    stage="keyframes",
    stage_version="3",
    bundle_id="toy@abc123",
    inputs={"descriptor": "Mira walks", "camera": "wide", "duration": 4.0, "cast": ["mira", "tom"]},
    seed=42,
    upstream=["a" * 64, "b" * 64],
)


def key_of(**changes: object) -> str:
    return artifact_key(**{**BASE, **changes})  # type: ignore[arg-type]


def test_key_is_sha256_hex_and_deterministic() -> None:
    k = key_of()
    assert len(k) == 64 and all(c in "0123456789abcdef" for c in k)
    assert k == key_of()


def test_key_is_stable_across_processes_with_different_hash_seeds() -> None:
    code = (
        "from mdream.cache import artifact_key; import json, sys; "
        "print(artifact_key(**json.loads(sys.argv[1])))"
    )
    keys = set()
    for hash_seed in ("1", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps(BASE)],
            env={**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)},
            capture_output=True, text=True, check=True, timeout=60,
        )
        keys.add(out.stdout.strip())
    assert keys == {key_of()}


@pytest.mark.parametrize(
    "change",
    [
        {"stage": "render"},
        {"stage_version": "4"},
        {"bundle_id": "toy@abc124"},
        {"inputs": {**BASE["inputs"], "descriptor": "Mira runs"}},  # type: ignore[dict-item]
        {"inputs": {**BASE["inputs"], "duration": 4.5}},  # type: ignore[dict-item]
        {"inputs": {**BASE["inputs"], "extra": None}},  # type: ignore[dict-item]
        {"inputs": {**BASE["inputs"], "cast": ["tom", "mira"]}},  # type: ignore[dict-item]
        {"seed": 43},
        {"upstream": ["a" * 64]},
        {"upstream": ["b" * 64, "a" * 64]},  # upstream order matters (the keyframe chain)
        {"upstream": []},
    ],
)
def test_every_argument_changes_the_key(change: dict[str, object]) -> None:
    assert key_of(**change) != key_of()


def test_dict_order_does_not_matter_at_any_depth() -> None:
    a = {"x": 1, "y": {"p": [1, 2], "q": "s"}}
    b = {"y": {"q": "s", "p": [1, 2]}, "x": 1}
    assert key_of(inputs=a) == key_of(inputs=b)


def test_json_types_stay_distinct() -> None:
    # 1, 1.0, True and "1" are different JSON values, so different keys.
    keys = {key_of(inputs={"v": v}) for v in (1, 1.0, True, "1", None, [1])}
    assert len(keys) == 6


def test_floats_are_encoded_by_shortest_repr() -> None:
    assert canonical_json({"v": 0.1 + 0.2}) == '{"v":0.30000000000000004}'
    assert key_of(inputs={"v": 0.1 + 0.2}) == key_of(inputs={"v": 0.30000000000000004})
    assert key_of(inputs={"v": 0.1 + 0.2}) != key_of(inputs={"v": 0.3})


def test_canonical_json_has_sorted_keys_and_no_whitespace() -> None:
    assert canonical_json({"b": [1, (2, 3)], "a": "é"}) == '{"a":"é","b":[1,[2,3]]}'


def test_enums_encode_as_their_values() -> None:
    class Camera(enum.StrEnum):
        WIDE = "wide"

    assert key_of(inputs={"camera": Camera.WIDE}) == key_of(inputs={"camera": "wide"})


@pytest.mark.parametrize(
    ("inputs", "fragment"),
    [
        ({"blob": b"abc"}, "inputs['blob']"),
        ({"path": Path("x.png")}, "PosixPath"),
        ({"nested": {"v": float("nan")}}, "inputs['nested']['v']"),
        ({"v": float("inf")}, "not representable"),
        ({1: "int key"}, "not a str"),
        ({"s": {1, 2}}, "set"),
    ],
)
def test_non_json_values_raise_a_clear_type_error(inputs: dict, fragment: str) -> None:
    with pytest.raises(TypeError, match="not JSON-able|not representable|not a str") as info:
        key_of(inputs=inputs)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"upstream": "a" * 64}, TypeError),  # a single str would be iterated char by char
        ({"upstream": [1]}, TypeError),
        ({"seed": True}, TypeError),
        ({"seed": 1.0}, TypeError),
        ({"stage_version": 3}, TypeError),
        ({"stage": "Bad Stage"}, ValueError),
        ({"stage": "runs"}, ValueError),
        ({"inputs": [1, 2]}, TypeError),
    ],
)
def test_bad_arguments_are_rejected(change: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        key_of(**change)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)


def reversed_dicts(value: object) -> object:
    """The same JSON value with every dict's insertion order reversed."""
    if isinstance(value, dict):
        return {k: reversed_dicts(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reversed_dicts(v) for v in value]
    return value


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_property_key_ignores_dict_order_and_encoding_round_trips(inputs: dict) -> None:
    assert key_of(inputs=inputs) == key_of(inputs=reversed_dicts(inputs))
    assert json.loads(canonical_json(inputs)) == inputs
