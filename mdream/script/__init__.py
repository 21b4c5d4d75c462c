"""The multimodal movie script: pydantic models, loading with located errors, and the shot plan.

    script = load_script("examples/scripts/short.yaml")   # ScriptError lists every problem at once
    plan = plan_script(script)                             # shots in playing order, default ids filled
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
