"""``mdream script-validate``: load and cross-check scripts, summarise each."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdream.errors import InputError, MdreamError
from mdream.script import load_script, plan_script, script_json_schema


@dataclass
class ValidationResult:
    """One script's verdict: a summary when valid, its problems otherwise."""

    path: Path
    error: MdreamError | None = None
    """The script's problems (InputError), or the components its bundle lacks here (NotBuiltError)."""
    title: str = ""
    characters: list[str] = field(default_factory=list)
    scenes: list[str] = field(default_factory=list)
    arcs: int = 0
    shots: int = 0
    total_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        from mdream.cli._common import error_to_dict

        out: dict[str, Any] = {"path": str(self.path), "ok": self.ok}
        if self.ok:
            out.update(
                title=self.title,
                characters=self.characters,
                scenes=self.scenes,
                arcs=self.arcs,
                shots=self.shots,
                total_seconds=self.total_seconds,
            )
        else:
            out.update(error_to_dict(self.error))
        return out


def validate_script(path: str | Path) -> ValidationResult:
    """Validate one script and check that its model bundle has what it needs; problems are returned, not raised."""
    from mdream.models.bundle import ModelBundle
    from mdream.stages.run import required_components

    path = Path(path)
    try:
        script = load_script(path)
        plan = plan_script(script)
        # the script is sound; can this machine make its movie? (every component it needs is present)
        bundle = ModelBundle.find(script.output.model_bundle, base_dir=path.resolve().parent)
        bundle.require(required_components(plan), f"the script {path.name}")
    except MdreamError as err:
        return ValidationResult(path=path, error=err)
    return ValidationResult(
        path=path,
        title=plan.title,
        characters=[f"{c.id} ({c.name})" for c in script.characters],
        scenes=[s.id for s in script.scenes],
        arcs=len(script.arcs),
        shots=len(plan.shots),
        total_seconds=plan.total_duration,
    )


def validate_scripts(paths: list[Path]) -> list[ValidationResult]:
    """Validate several scripts (each is checked even when an earlier one fails)."""
    if not paths:
        raise InputError("No script given.", hint="mdream script-validate SCRIPT.yaml [MORE.yaml ...]")
    return [validate_script(p) for p in paths]


def script_schema() -> dict[str, Any]:
    """The script format's JSON Schema (for editors: yaml-language-server, VS Code)."""
    return script_json_schema()
