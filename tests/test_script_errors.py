"""One test per kind of invalid script: each asserts the message, the field path and the line."""

from __future__ import annotations

import pytest
from script_helpers import BASE_SCRIPT, edit, line_of, problems_of, the_problem, write_script_text


def _check(tmp_path, text, field, message, line_needle, *, hint=None, occurrence=1, only=False):
    problems = problems_of(write_script_text(tmp_path, text))
    if only:
        assert [p.field for p in problems] == [field], [str(p) for p in problems]
    problem = the_problem(problems, field)
    assert message in problem.message
    assert problem.line == line_of(text, line_needle, occurrence)
    assert problem.column is not None and problem.column >= 1
    if hint is not None:
        assert problem.hint is not None and hint in problem.hint
    return problem


# ---------------------------------------------------------------- syntax and top level


def test_yaml_syntax_error_is_located(tmp_path):
    text = edit(BASE_SCRIPT, "identifier: Ada arrives", "identifier: Ada: arrives")
    problem = _check(tmp_path, text, "", "YAML syntax error", "Ada: arrives", hint="quoted", only=True)
    assert problem.column == len("        identifier: Ada:")


def test_tab_indentation_is_located_with_hint(tmp_path):
    text = edit(BASE_SCRIPT, "    name: Ada\n", "\tname: Ada\n")
    _check(tmp_path, text, "", "YAML syntax error", "\tname: Ada", hint="tabs", only=True)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(tmp_path, text):
    problems = problems_of(write_script_text(tmp_path, text))
    assert len(problems) == 1 and "the script is empty" in problems[0].message
    assert problems[0].line == 1 and problems[0].field == ""


def test_top_level_must_be_a_mapping(tmp_path):
    problems = problems_of(write_script_text(tmp_path, "\n- one\n- two\n"))
    assert len(problems) == 1
    assert "top level of a script must be a mapping" in problems[0].message
    assert "a list" in problems[0].message
    assert problems[0].line == 2


def test_repeated_key(tmp_path):
    text = edit(BASE_SCRIPT, "        camera: wide\n", "        camera: wide\n        camera: medium\n")
    _check(tmp_path, text, "arcs[0].shots[0].camera", "appears twice", "camera: medium", only=True)


# ---------------------------------------------------------------- keys


def test_unknown_top_level_key_suggests_the_right_one(tmp_path):
    text = edit(BASE_SCRIPT, "characters:\n  - id: ada", "charaters:\n  - id: ada")
    # Only the typo: no "unknown character" noise for the shots that use the cast.
    problem = _check(tmp_path, text, "charaters", "unknown key 'charaters'", "charaters:", only=True)
    assert problem.hint == "did you mean 'characters'?"
    assert problem.column == 1


def test_unknown_nested_key_explains_the_missing_one(tmp_path):
    text = edit(BASE_SCRIPT, "descriptor: Wide shot of Ada", "discriptor: Wide shot of Ada")
    problem = _check(
        tmp_path, text, "arcs[0].shots[0].discriptor", "unknown key 'discriptor'", "discriptor:", only=True
    )
    assert problem.hint == "did you mean 'descriptor'?"
    assert problem.column == 9


def test_unknown_key_without_close_match_lists_allowed_keys(tmp_path):
    text = edit(BASE_SCRIPT, "    name: Bo\n", "    name: Bo\n    mood: grumpy\n")
    _check(
        tmp_path,
        text,
        "characters[1].mood",
        "unknown key 'mood'",
        "mood: grumpy",
        hint="allowed keys here: id, name",
    )


def test_missing_key_is_located_at_its_mapping(tmp_path):
    text = edit(BASE_SCRIPT, "        identifier: Ada arrives\n", "")
    problem = _check(
        tmp_path,
        text,
        "arcs[0].shots[0].identifier",
        "missing required key 'identifier'",
        "- scene: harbor",
        hint="Short structural line",
        only=True,
    )
    assert problem.column == 9  # the mapping starts after "- "


def test_wrong_schema_version(tmp_path):
    text = edit(BASE_SCRIPT, "schema_version: 1", "schema_version: 2")
    _check(
        tmp_path,
        text,
        "schema_version",
        "unsupported schema_version 2",
        "schema_version",
        hint="reads schema_version 1",
        only=True,
    )


def test_missing_schema_version(tmp_path):
    text = edit(BASE_SCRIPT, "schema_version: 1\n", "")
    _check(
        tmp_path,
        text,
        "schema_version",
        "missing required key 'schema_version'",
        "title:",
        hint="schema_version: 1",
        only=True,
    )


# ---------------------------------------------------------------- values


@pytest.mark.parametrize("typo", ["closeup", "close_up", "Close-Up", "close up"])
def test_camera_typo_suggests_close_up(tmp_path, typo):
    text = edit(BASE_SCRIPT, "camera: medium", f"camera: {typo}")
    problem = _check(
        tmp_path,
        text,
        "arcs[0].shots[1].camera",
        "camera must be one of wide, medium, close-up",
        f"camera: {typo}",
        only=True,
    )
    assert problem.hint == "did you mean 'close-up'?"


def test_position_typo(tmp_path):
    text = edit(
        BASE_SCRIPT, "{id: ada, action: walks, position: left}", "{id: ada, action: walks, position: centre}"
    )
    _check(
        tmp_path,
        text,
        "arcs[0].shots[0].characters[0].position",
        "position must be one of left, center, right",
        "position: centre",
        hint="did you mean 'center'?",
        only=True,
    )


@pytest.mark.parametrize("value", ["0", "-1", "601", "4s", ".nan", "1.0e+6"])
def test_bad_duration(tmp_path, value):
    text = edit(BASE_SCRIPT, "duration: 2.5", f"duration: {value}")
    problem = _check(
        tmp_path,
        text,
        "arcs[1].shots[0].duration",
        "duration must be a number of seconds greater than 0 and at most 600",
        f"duration: {value}",
        only=True,
    )
    if value == "4s":
        assert "plain number" in problem.hint


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("width", "65", "multiple of 8 from 32 to 4096"),
        ("width", "16", "multiple of 8 from 32 to 4096"),
        ("height", "8192", "multiple of 8 from 32 to 4096"),
        ("height", "64.5", "multiple of 8 from 32 to 4096"),
        ("fps", "0", "from 1 to 120"),
        ("fps", "121", "from 1 to 120"),
        ("clip_length", "1", "from 2 to 256"),
        ("clip_length", "257", "from 2 to 256"),
    ],
)
def test_bad_output_settings(tmp_path, key, value, rule):
    old = {
        "width": "  width: 64",
        "height": "  height: 64",
        "fps": "  fps: 8",
        "clip_length": "  clip_length: 8",
    }[key]
    text = edit(BASE_SCRIPT, old, f"  {key}: {value}")
    problem = _check(tmp_path, text, f"output.{key}", rule, f"  {key}: {value}", only=True)
    assert problem.message.startswith(f"{key} must be")
    if (key, value) == ("width", "65"):
        assert problem.hint == "nearest valid size: 64"


def test_invalid_id_suggests_a_valid_one(tmp_path):
    text = edit(BASE_SCRIPT, "  - id: forest", "  - id: Dark Forest")
    problem = _check(tmp_path, text, "scenes[1].id", "'Dark Forest' is not a valid id", "Dark Forest")
    assert "e.g. 'dark_forest'" in problem.hint


def test_empty_text(tmp_path):
    text = edit(BASE_SCRIPT, "title: Test Movie", 'title: "  "')
    _check(tmp_path, text, "title", "title must not be empty", "title:", only=True)


def test_number_as_text_is_accepted(tmp_path):
    from mdream.script import load_script

    script = load_script(write_script_text(tmp_path, edit(BASE_SCRIPT, "title: Test Movie", "title: 1984")))
    assert script.title == "1984"


def test_yaml_boolean_in_text_field_hints_quotes(tmp_path):
    text = edit(BASE_SCRIPT, "lighting: warm", "lighting: off")
    _check(
        tmp_path,
        text,
        "scenes[0].elements.lighting",
        "expected text, got False",
        "lighting: off",
        hint="quotes",
        only=True,
    )


def test_shot_character_as_plain_id(tmp_path):
    text = edit(BASE_SCRIPT, "          - {id: bo, action: runs}", "          - bo")
    _check(
        tmp_path,
        text,
        "arcs[1].shots[0].characters[0]",
        "expected a mapping of keys, got 'bo'",
        "          - bo",
        hint="{id: bo}",
        only=True,
    )


def test_faces_as_single_path(tmp_path):
    text = edit(BASE_SCRIPT, "faces: [faces/ada.png]", "faces: faces/ada.png")
    _check(
        tmp_path,
        text,
        "characters[0].faces",
        "expected a list",
        "faces: faces/ada.png",
        hint="faces: [faces/ada.png]",
        only=True,
    )


def test_no_face_photos(tmp_path):
    text = edit(BASE_SCRIPT, "faces: [faces/ada.png]", "faces: []")
    _check(tmp_path, text, "characters[0].faces", "at least one face photo", "faces: []", only=True)


# ---------------------------------------------------------------- empty story


def test_no_arcs(tmp_path):
    text = (
        BASE_SCRIPT[: BASE_SCRIPT.index("arcs:")] + "arcs: []\n" + BASE_SCRIPT[BASE_SCRIPT.index("output:") :]
    )
    _check(tmp_path, text, "arcs", "the story is empty", "arcs: []", only=True)


def test_missing_arcs(tmp_path):
    text = BASE_SCRIPT[: BASE_SCRIPT.index("arcs:")] + BASE_SCRIPT[BASE_SCRIPT.index("output:") :]
    _check(tmp_path, text, "arcs", "the story is empty", "schema_version", only=True)


def test_arc_without_shots(tmp_path):
    text = BASE_SCRIPT[: BASE_SCRIPT.index("    shots:", BASE_SCRIPT.index("id: act2"))]
    text += "    shots: []\n" + BASE_SCRIPT[BASE_SCRIPT.index("output:") :]
    _check(tmp_path, text, "arcs[1].shots", "this arc has no shots", "shots: []", only=True)


# ---------------------------------------------------------------- ids and references


def test_duplicate_character_id(tmp_path):
    text = edit(BASE_SCRIPT, "  - id: bo\n", "  - id: ada\n")
    problem = _check(
        tmp_path, text, "characters[1].id", "duplicate character id 'ada'", "  - id: ada", occurrence=2
    )
    assert f"first defined at line {line_of(text, '  - id: ada')}" in problem.hint


def test_duplicate_scene_id(tmp_path):
    text = edit(BASE_SCRIPT, "  - id: forest", "  - id: harbor")
    _check(tmp_path, text, "scenes[1].id", "duplicate scene id 'harbor'", "  - id: harbor", occurrence=2)


def test_duplicate_arc_id(tmp_path):
    text = edit(BASE_SCRIPT, "  - id: act2", "  - id: act1")
    _check(tmp_path, text, "arcs[1].id", "duplicate arc id 'act1'", "  - id: act1", occurrence=2, only=True)


def test_duplicate_explicit_shot_id(tmp_path):
    text = edit(BASE_SCRIPT, "      - scene: forest", "      - id: talk\n        scene: forest")
    _check(
        tmp_path, text, "arcs[1].shots[0].id", "duplicate shot id 'talk'", "id: talk", occurrence=2, only=True
    )


def test_shot_id_colliding_with_a_default_id(tmp_path):
    text = edit(BASE_SCRIPT, "      - scene: forest", "      - id: act1-001\n        scene: forest")
    problem = _check(
        tmp_path, text, "arcs[1].shots[0].id", "duplicate shot id 'act1-001'", "id: act1-001", only=True
    )
    assert f"first used at line {line_of(text, '- scene: harbor')}" in problem.hint


def test_unknown_scene(tmp_path):
    text = edit(BASE_SCRIPT, "      - scene: forest", "      - scene: forrest")
    _check(
        tmp_path,
        text,
        "arcs[1].shots[0].scene",
        "unknown scene 'forrest'",
        "scene: forrest",
        hint="did you mean 'forest'?",
        only=True,
    )


def test_unknown_character(tmp_path):
    text = edit(BASE_SCRIPT, "{id: bo, action: runs}", "{id: zed, action: runs}")
    _check(
        tmp_path,
        text,
        "arcs[1].shots[0].characters[0].id",
        "unknown character 'zed'",
        "id: zed",
        hint="defined characters: ada, bo",
        only=True,
    )


def test_same_character_twice_in_a_shot(tmp_path):
    text = edit(BASE_SCRIPT, "{id: bo, expression: happy, position: right}", "{id: ada, expression: happy}")
    _check(
        tmp_path,
        text,
        "arcs[0].shots[1].characters[1].id",
        "character 'ada' appears twice in this shot",
        "{id: ada, expression: happy}",
        only=True,
    )


def test_two_characters_at_one_position(tmp_path):
    text = edit(
        BASE_SCRIPT,
        "{id: bo, expression: happy, position: right}",
        "{id: bo, expression: happy, position: left}",
    )
    _check(
        tmp_path,
        text,
        "arcs[0].shots[1].characters[1].position",
        "two characters at position 'left'",
        "{id: bo, expression: happy, position: left}",
        only=True,
    )


@pytest.mark.parametrize("value", ["-1", "1.5", "lucky"])
def test_bad_seed(tmp_path, value):
    text = edit(BASE_SCRIPT, "seed: 3", f"seed: {value}")
    _check(tmp_path, text, "seed", "seed must be a whole number from 0", f"seed: {value}", only=True)


def test_second_yaml_document(tmp_path):
    text = BASE_SCRIPT + "---\ntitle: Another\n"
    _check(
        tmp_path,
        text,
        "",
        "expected a single document in the stream, but found another document",
        "---",
        hint="remove the extra '---'",
        only=True,
    )


def test_shot_characters_as_plain_text(tmp_path):
    text = edit(
        BASE_SCRIPT, "        characters:\n          - {id: bo, action: runs}", "        characters: bo"
    )
    _check(
        tmp_path,
        text,
        "arcs[1].shots[0].characters",
        "expected a list, got 'bo'",
        "characters: bo",
        hint="characters: [{id: bo}]",
        only=True,
    )
