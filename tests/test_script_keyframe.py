"""The optional per-shot `keyframe` (a given storyboard frame)."""

from __future__ import annotations

import pytest
import yaml
from conftest import small_script_dict, write_face, write_script

from mdream.errors import ScriptError
from mdream.script import load_script, plan_script


def test_given_keyframe_is_resolved_and_enters_the_plan(tmp_path):
    data = small_script_dict()
    data["arcs"][0]["shots"][0]["keyframe"] = "frames/first.png"
    folder = tmp_path / "m"
    write_face(folder / "frames" / "first.png", (10, 20, 30))
    plan = plan_script(load_script(write_script(folder, data)))
    assert plan.shots[0].keyframe == (folder / "frames" / "first.png").resolve()
    assert plan.shots[1].keyframe is None


def test_missing_keyframe_is_located(tmp_path):
    data = small_script_dict()
    data["arcs"][0]["shots"][2]["keyframe"] = "frames/nope.png"
    path = write_script(tmp_path / "m", data)
    with pytest.raises(ScriptError) as info:
        load_script(path)
    (problem,) = info.value.problems
    assert problem.field == "arcs[0].shots[2].keyframe"
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "nope.png" in text)
    assert problem.line == line
    assert "frames/nope.png" in problem.message and "keyframe" in problem.message


def test_keyframe_outside_the_script_folder_is_rejected(tmp_path):
    data = small_script_dict()
    data["arcs"][0]["shots"][0]["keyframe"] = "../outside.png"
    write_face(tmp_path / "outside.png", (1, 2, 3))
    path = write_script(tmp_path / "m", data)
    with pytest.raises(ScriptError) as info:
        load_script(path)
    assert [p.field for p in info.value.problems] == ["arcs[0].shots[0].keyframe"]
    assert yaml.safe_load(path.read_text())  # the script itself is untouched
