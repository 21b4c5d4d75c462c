"""The multimodal movie script: pydantic models, loading with located errors, and the shot plan.

`load_script(path)` returns a validated Script or raises ScriptError listing every problem at once;
`plan_script(script)` orders the shots and fills in default shot ids; `script_json_schema()` is the
format as JSON Schema. The format is documented in docs/script-format.md.
"""

from __future__ import annotations

from mdream.script.loader import load_script
from mdream.script.models import (
    Arc,
    Character,
    OutputSettings,
    Scene,
    SceneElements,
    Script,
    Shot,
    ShotCharacter,
    Style,
    script_json_schema,
)
from mdream.script.plan import Plan, PlannedShot, plan_script

__all__ = [
    "Arc",
    "Character",
    "OutputSettings",
    "Plan",
    "PlannedShot",
    "Scene",
    "SceneElements",
    "Script",
    "Shot",
    "ShotCharacter",
    "Style",
    "load_script",
    "plan_script",
    "script_json_schema",
]
