"""The package layering, checked statically: every ``import`` in mdream's sources (module-level or
inside a function) against a table of which layer may not import which.

Sub-commands that live beside their packages are named by ``"module:attribute"`` strings in
``mdream.cli.main.SUBCOMMANDS`` and imported only when run; those strings are not imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mdream

PACKAGE_ROOT = Path(mdream.__file__).resolve().parent

#: The layer of each first-level name under ``mdream``; top-level modules (``mdream.errors``,
#: ``mdream.images``, ...) and these packages form the production layer.
LAYERS = {
    "cli": "production",
    "stages": "production",
    "models": "production",
    "cache": "production",
    "script": "production",
    "eval": "eval",
    "training": "training",
    "toyworld": "toyworld",
}

#: layer -> layers it must never import.
FORBIDDEN = {
    "production": {"eval", "training", "toyworld"},
    "eval": {"training"},
}

#: (importing module, imported layer) pairs allowed to break a rule until a planned file move lands,
#: each with a comment naming its move; empty it as the moves land. Entries that match nothing are harmless.
PENDING_MOVES: list[tuple[str, str]] = []


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name inside mdream, None for other packages."""
    parts = module.split(".")
    if parts[0] != "mdream":
        return None
    if len(parts) == 1:
        return "production"
    return LAYERS.get(parts[1], "production" if (PACKAGE_ROOT / f"{parts[1]}.py").is_file() else None)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, list[str]]]:
    """(line, dotted names) of every static import statement in the file, at any depth, relative
    imports resolved; ``from a import b`` names both ``a`` and ``a.b`` (``b`` may be a submodule)."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.append((node.lineno, [alias.name for alias in node.names]))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, [module, *(f"{module}.{a.name}" for a in node.names if a.name != "*")]))
    return found


def layering_violations() -> list[str]:
    problems = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        importer = module_name(path)
        forbidden = FORBIDDEN.get(layer_of(importer) or "", set())
        for line, names in imported_modules(path):
            for imported in names:
                target = layer_of(imported)
                if target in forbidden and (importer, target) not in PENDING_MOVES:
                    problems.append(f"{path.relative_to(PACKAGE_ROOT.parent)}:{line}: {importer} "
                                    f"({layer_of(importer)}) imports {imported} ({target})")
                    break  # one report per statement
    return problems


def test_no_layer_imports_a_forbidden_one():
    assert layering_violations() == []


def test_the_checker_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    """The checker itself: a planted function-level and a relative import are both reported."""
    root = tmp_path / "mdream"
    (root / "stages").mkdir(parents=True)
    (root / "eval").mkdir()
    for f in ("__init__.py", "stages/__init__.py", "eval/__init__.py", "eval/metrics.py", "errors.py"):
        (root / f).write_text("")
    (root / "stages" / "a.py").write_text("import json\n\ndef f():\n    from mdream.eval.metrics import x\n    return x\n")
    (root / "stages" / "b.py").write_text("from ..eval import metrics\nfrom .. import errors\n")
    (root / "eval" / "c.py").write_text("from mdream.errors import InputError\n")  # allowed direction
    monkeypatch.setitem(globals(), "PACKAGE_ROOT", root)
    found = layering_violations()
    assert len(found) == 2, found  # a.py's function-level import and b.py's ``from ..eval import``; not c.py
    assert any("stages/a.py:4" in p and "mdream.eval.metrics" in p for p in found)
    assert any("stages/b.py:1" in p for p in found)
    assert layer_of("mdream.errors") == "production" and layer_of("numpy") is None
