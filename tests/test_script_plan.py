"""plan_script: playing order, default shot ids, and per-shot cache inputs."""

from __future__ import annotations

import dataclasses
import json

import pytest
from script_helpers import BASE_SCRIPT, edit, write_png, write_script_text

from mdream.script import Plan, PlannedShot, load_script, plan_script


def _plan(tmp_path, text: str = BASE_SCRIPT) -> Plan:
    return plan_script(load_script(write_script_text(tmp_path, text)))


def test_order_and_default_ids(tmp_path):
    plan = _plan(tmp_path)
    assert [(s.index, s.id, s.arc_id, s.scene_id) for s in plan.shots] == [
        (0, "act1-001", "act1", "harbor"),
        (1, "talk", "act1", "harbor"),
        (2, "act2-001", "act2", "forest"),
    ]
    assert [s.cast_ids for s in plan.shots] == [("ada",), ("ada", "bo"), ("bo",)]
    assert [s.camera for s in plan.shots] == ["wide", "medium", "close-up"]
    assert plan.total_duration == pytest.approx(4.0 + 3.0 + 2.5)
    assert (plan.title, plan.seed) == ("Test Movie", 3)
    assert list(plan.characters) == ["ada", "bo"] and list(plan.scenes) == ["harbor", "forest"]
    assert plan.shot("talk").identifier == "Ada meets Bo"
    assert isinstance(plan.shots[0], PlannedShot)


def test_default_ids_count_within_each_arc(tmp_path):
    text = edit(BASE_SCRIPT, "      - id: talk\n        scene: harbor", "      - scene: harbor")
    plan = _plan(tmp_path, text)
    assert [s.id for s in plan.shots] == ["act1-001", "act1-002", "act2-001"]


def test_plan_is_frozen(tmp_path):
    plan = _plan(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.shots[0].duration = 9.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.seed = 1  # type: ignore[misc]


def _inputs(plan: Plan) -> list[str]:
    return [json.dumps(shot.inputs_for_cache(), sort_keys=True) for shot in plan.shots]


def test_inputs_for_cache_contents(tmp_path):
    inputs = _plan(tmp_path).shots[1].inputs_for_cache()
    assert inputs["scene"] == {
        "id": "harbor",
        "description": "a harbor at dusk",
        "elements": {"props": ["boat"], "lighting": "warm", "time_of_day": "dusk"},
    }
    assert inputs["cast"][1] == {
        "id": "bo",
        "action": None,
        "expression": "happy",
        "position": "right",
        "name": "Bo",
        "description": "a man with a blue coat",
    }
    assert (inputs["identifier"], inputs["camera"], inputs["duration"]) == ("Ada meets Bo", "medium", 3.0)
    assert json.loads(json.dumps(inputs)) == inputs


@pytest.mark.parametrize(
    ("old", "new", "changed"),
    [
        ("Medium shot of Ada and Bo talking.", "Medium shot of Ada and Bo arguing.", {1}),  # one descriptor
        ("identifier: Bo runs", "identifier: Bo flees", {2}),
        ("duration: 4.0", "duration: 5.0", {0}),
        ("{id: ada, action: walks, position: left}", "{id: ada, action: runs, position: left}", {0}),
        ("a man with a blue coat", "a man with a red coat", {1, 2}),  # a character used by two shots
        ("a forest at noon", "a forest at night", {2}),  # a scene used by one shot
    ],
)
def test_editing_changes_only_the_shots_that_depend_on_it(tmp_path, old, new, changed):
    before = _inputs(_plan(tmp_path / "a"))
    after = _inputs(_plan(tmp_path / "b", edit(BASE_SCRIPT, old, new)))
    assert {i for i, (x, y) in enumerate(zip(before, after, strict=True)) if x != y} == changed


def test_inputs_hold_no_position_in_the_movie(tmp_path):
    plan = _plan(tmp_path)
    # Inputs hold no index or id, so a stage keys them together with the upstream keys it needs.
    assert "index" not in plan.shots[0].inputs_for_cache() and "id" not in plan.shots[0].inputs_for_cache()


def test_character_inputs_follow_face_contents(tmp_path):
    plan = _plan(tmp_path)
    before = plan.character_inputs_for_cache("bo")
    assert [f["path"] for f in before["faces"]] == ["faces/bo_1.png", "faces/bo_2.png"]
    write_png(tmp_path / "faces" / "bo_2.png", (1, 2, 3))
    after = plan.character_inputs_for_cache("bo")
    assert after["faces"][0] == before["faces"][0] and after["faces"][1] != before["faces"][1]
    assert plan.character_inputs_for_cache("ada") == plan.character_inputs_for_cache("ada")
    assert plan.face_paths("bo")[0] == (tmp_path / "faces" / "bo_1.png").resolve()
