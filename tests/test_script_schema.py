"""script_json_schema: a valid JSON Schema that accepts the examples and rejects typos."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from mdream.script import script_json_schema

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples" / "scripts").glob("*.yaml"))


@pytest.fixture(scope="module")
def schema() -> dict:
    return script_json_schema()


def test_is_valid_json_schema(schema):
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "title" in schema
    assert json.loads(json.dumps(schema)) == schema


def test_top_level_properties(schema):
    assert set(schema["properties"]) == {
        "schema_version",
        "title",
        "seed",
        "style",
        "characters",
        "scenes",
        "arcs",
        "output",
    }
    assert set(schema["required"]) == {"schema_version", "title", "scenes", "arcs"}
    assert schema["additionalProperties"] is False
    assert schema["properties"]["schema_version"]["const"] == 1


def test_every_field_is_described(schema):
    models = [schema, *schema["$defs"].values()]
    for model in models:
        for name, prop in model["properties"].items():
            assert prop.get("description"), f"{model.get('title')}.{name} has no description"
            assert "\n" not in prop["description"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_match_the_schema(schema, path):
    jsonschema.validate(yaml.safe_load(path.read_text()), schema)


def test_schema_rejects_typos(schema):
    data = yaml.safe_load(EXAMPLES[0].read_text())
    data["arcs"][0]["shots"][0]["camera"] = "closeup"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema)
    data = yaml.safe_load(EXAMPLES[0].read_text())
    data["charaters"] = []
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema)


DOC = Path(__file__).resolve().parent.parent / "docs" / "script-format.md"


def test_docs_mention_every_key():
    from mdream.script import models

    text = DOC.read_text()
    for model in (
        models.Script,
        models.Style,
        models.Character,
        models.Scene,
        models.SceneElements,
        models.Arc,
        models.Shot,
        models.ShotCharacter,
        models.OutputSettings,
    ):
        for name in model.model_fields:
            assert f"`{name}`" in text or f".{name}`" in text, (
                f"docs/script-format.md does not describe {name}"
            )


def test_docs_example_validates(tmp_path):
    from script_helpers import write_png

    from mdream.script import load_script

    text = DOC.read_text()
    example = next(block for block in text.split("```yaml\n")[1:] if "schema_version" in block)
    example = example.split("```")[0]
    (tmp_path / "script.yaml").write_text(example)
    for image in ("faces/mira_1.png", "faces/mira_2.png", "refs/frame1.png"):
        write_png(tmp_path / image)
    script = load_script(tmp_path / "script.yaml")
    assert script.arcs[0].shots[0].id == "arrival"
