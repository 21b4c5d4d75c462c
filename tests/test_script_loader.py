"""Loading scripts: the examples, JSON input, all problems at once, files that are not scripts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from script_helpers import BASE_SCRIPT, edit, line_of, problems_of, write_script_text

from mdream.errors import InputError, ScriptError
from mdream.script import load_script, plan_script

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE_SCRIPTS = sorted((EXAMPLES / "scripts").glob("*.yaml"))


def test_there_are_examples():
    assert {p.name for p in EXAMPLE_SCRIPTS} >= {"short.yaml", "long.yaml"}


@pytest.mark.parametrize("path", EXAMPLE_SCRIPTS, ids=lambda p: p.name)
def test_every_example_validates(path):
    plan = plan_script(load_script(path))
    assert plan.shots and plan.total_duration > 0


def _longest_absence(plan, character_id: str) -> int:
    present = [shot.index for shot in plan.shots if character_id in shot.cast_ids]
    return max((b - a for a, b in zip(present, present[1:], strict=False)), default=0)


def test_short_example_shape():
    plan = plan_script(load_script(EXAMPLES / "scripts" / "short.yaml"))
    assert 8 <= len(plan.shots) <= 12
    assert 2 <= len(plan.characters) <= 3 and 2 <= len(plan.scenes) <= 3


def test_long_example_shape():
    script = load_script(EXAMPLES / "scripts" / "long.yaml")
    plan = plan_script(script)
    assert 55 <= len(plan.shots) <= 65
    assert len(plan.characters) >= 4 and len(plan.scenes) >= 4 and len(script.arcs) >= 3
    # Characters leave and come back after long gaps (what tests identity over a whole movie).
    returning = [c for c in plan.characters if _longest_absence(plan, c) >= 20]
    assert len(returning) >= 2, {c: _longest_absence(plan, c) for c in plan.characters}


def test_examples_are_what_the_toy_world_writes():
    """The bundled examples are reproducible: make_examples.py --check rewrites and compares them."""
    result = subprocess.run([sys.executable, str(EXAMPLES / "make_examples.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_base_script_loads(tmp_path):
    script = load_script(write_script_text(tmp_path))
    assert script.title == "Test Movie" and script.seed == 3
    assert [c.id for c in script.characters] == ["ada", "bo"]
    assert script.output.model_bundle == "toy"  # default
    assert script.arcs[1].shots[0].characters[0].position is None


def test_defaults(tmp_path):
    text = BASE_SCRIPT[: BASE_SCRIPT.index("output:")].replace("seed: 3\n", "")
    script = load_script(write_script_text(tmp_path, text))
    assert script.seed == 0
    assert (script.output.width, script.output.height, script.output.fps, script.output.clip_length) == (
        64,
        64,
        8,
        8,
    )
    assert script.output.model_bundle == "toy"


def test_json_input(tmp_path):
    data = yaml.safe_load(BASE_SCRIPT)
    write_script_text(tmp_path)
    json_path = tmp_path / "script.json"
    json_path.write_text(json.dumps(data, indent="\t"))  # tabs: legal JSON, not legal YAML indentation
    from_json = load_script(json_path)
    from_yaml = load_script(tmp_path / "script.yaml")
    assert from_json.model_dump() == from_yaml.model_dump()
    assert from_json.root == from_yaml.root


def test_json_problems_are_located(tmp_path):
    data = yaml.safe_load(BASE_SCRIPT)
    data["arcs"][0]["shots"][1]["camera"] = "closeup"
    data["characters"][0]["nmae"] = "x"
    text = json.dumps(data, indent="\t")
    write_script_text(tmp_path, text, name="script.json")
    problems = problems_of(tmp_path / "script.json")
    assert [(p.field, p.line) for p in problems] == [
        ("characters[0].nmae", line_of(text, '"nmae"')),
        ("arcs[0].shots[1].camera", line_of(text, '"closeup"')),
    ]
    assert problems[0].hint == "did you mean 'name'?"
    assert problems[1].hint == "did you mean 'close-up'?"


def test_json_syntax_error(tmp_path):
    text = json.dumps(yaml.safe_load(BASE_SCRIPT), indent=2)
    broken = edit(text, '"seed": 3,', '"seed": 3')
    write_script_text(tmp_path, broken, name="script.json")
    problems = problems_of(tmp_path / "script.json")
    assert len(problems) == 1 and problems[0].message.startswith("JSON syntax error")
    assert problems[0].line == line_of(broken, '"seed": 3') + 1  # json reports the next token


def test_all_problems_at_once(tmp_path):
    text = edit(BASE_SCRIPT, "camera: medium", "camera: closeup")  # pydantic
    text = edit(text, "      - scene: forest", "      - scene: beach")  # cross-check on a shot
    path = write_script_text(tmp_path, text)
    (tmp_path / "faces" / "ada.png").unlink()  # file check
    with pytest.raises(ScriptError) as caught:
        load_script(path)
    problems = caught.value.problems
    assert [(p.field, p.line) for p in problems] == [
        ("characters[0].faces[0]", line_of(text, "faces/ada.png")),
        ("arcs[0].shots[1].camera", line_of(text, "camera: closeup")),
        ("arcs[1].shots[0].scene", line_of(text, "scene: beach")),
    ]
    assert caught.value.exit_code == 2
    report = str(caught.value)
    assert report.startswith("3 problems in script:")
    location = f"{path}:{line_of(text, 'camera: closeup')}:17"
    assert f"{location}: arcs[0].shots[1].camera: camera must be one of" in report
    assert "(hint: did you mean 'close-up'?)" in report


def test_cross_checks_run_where_pydantic_failed(tmp_path):
    # The second shot is invalid for pydantic (no descriptor); its unknown character is still found.
    text = edit(BASE_SCRIPT, "        descriptor: Medium shot of Ada and Bo talking.\n", "")
    text = edit(text, "{id: bo, expression: happy, position: right}", "{id: bob, position: right}")
    problems = problems_of(write_script_text(tmp_path, text))
    assert {p.field for p in problems} == {"arcs[0].shots[1].descriptor", "arcs[0].shots[1].characters[1].id"}


def test_missing_script_file(tmp_path):
    with pytest.raises(InputError) as caught:
        load_script(tmp_path / "nope.yaml")
    assert not isinstance(caught.value, ScriptError)
    assert "script file not found" in caught.value.message and caught.value.exit_code == 2


def test_folder_instead_of_script(tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        load_script(tmp_path)


def test_not_utf8(tmp_path):
    path = write_script_text(tmp_path)
    path.write_bytes(b"schema_version: 1\ntitle: caf\xe9\n")
    problems = problems_of(path)
    assert problems[0].line == 2 and "not UTF-8" in problems[0].message


def test_yaml_anchors_and_merge_keys(tmp_path):
    text = edit(
        BASE_SCRIPT,
        "          - {id: ada, action: walks, position: left}",
        "          - &ada_left {id: ada, action: walks, position: left}",
    )
    text = edit(text, "          - {id: ada, position: left}", "          - {<<: *ada_left, action: waves}")
    script = load_script(write_script_text(tmp_path, text))
    assert script.arcs[0].shots[1].characters[0].action == "waves"


_FRAGMENTS = [
    ":",
    "- ",
    "[",
    "]",
    "{",
    "}",
    "\n",
    "  ",
    "&a ",
    "*a",
    "<<: *a",
    "!!python/object:x",
    "~",
    "-1",
    "yes",
    "'",
    '"',
    "\t",
    "---\n",
    "? ",
    "#",
    "\x00",
    "é",
    "id: ada",
    "scene: forest",
    "faces: [/x]",
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(BASE_SCRIPT)), st.integers(0, 8), st.sampled_from(_FRAGMENTS)),
        min_size=1,
        max_size=4,
    )
)
def test_damaged_scripts_never_crash(tmp_path, edits):
    """Random edits of a valid script either load or raise ScriptError with located problems."""
    text = BASE_SCRIPT
    for position, cut, fragment in edits:
        position = min(position, len(text))
        text = text[:position] + fragment + text[position + cut :]
    path = write_script_text(tmp_path, text)
    try:
        plan_script(load_script(path))
    except ScriptError as error:
        assert error.problems
        for problem in error.problems:
            assert problem.message and problem.line is not None and problem.line >= 1
