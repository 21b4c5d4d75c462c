"""A fast CLI: ``mdream --help`` and ``mdream script-validate`` import no heavy library, and the
sub-commands named by module strings (train, toyworld, cache, eval) load only when run.

Checked from ``sys.modules`` in a fresh interpreter (deterministic; the timing lives in
benchmarks/bench_cli_startup.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from mdream.cli._apps import load_command
from mdream.cli.main import SUBCOMMANDS, app

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "scripts" / "short.yaml"

#: Libraries no light command may import (each costs 0.1 to several seconds at startup).
HEAVY = ("torch", "diffusers", "transformers", "accelerate", "peft", "safetensors", "numpy", "cv2", "onnxruntime",
         "insightface", "scenedetect", "imageio_ffmpeg")
#: The packages behind the lazily loaded sub-commands.
SUBCOMMAND_PACKAGES = ("mdream.training", "mdream.toyworld", "mdream.eval")

PROBE = """
import json, sys
from mdream.cli.main import main
sys.argv = ["mdream", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit as exc:
    code = exc.code
print("\\n" + json.dumps({"exit": code, "modules": sorted({m.split(".")[0] for m in sys.modules} | set(sys.modules))}))
"""


def modules_after(*args: str) -> tuple[int, set[str]]:
    """Run ``mdream ARGS`` in a fresh interpreter; its exit code and every module it imported."""
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(list(args))], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report["exit"], set(report["modules"])


@pytest.mark.parametrize("args", [["--help"], ["script-validate", str(EXAMPLE)], ["script-schema"]],
                         ids=["help", "script-validate", "script-schema"])
def test_light_commands_import_no_heavy_library(args):
    code, modules = modules_after(*args)
    assert code == 0
    assert sorted(modules & set(HEAVY)) == []
    assert sorted(modules & set(SUBCOMMAND_PACKAGES)) == []


def test_import_of_the_cli_imports_no_heavy_library():
    result = subprocess.run(
        [sys.executable, "-c", "import json, sys, mdream.cli.main; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    modules = {m.split(".")[0] for m in json.loads(result.stdout)} | set(json.loads(result.stdout))
    assert sorted(modules & {*HEAVY, *SUBCOMMAND_PACKAGES}) == []


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_listed_help_is_the_subcommands_own(name):
    """``mdream --help`` lists each lazy sub-command with its registered line; that line must be the
    loaded command's own first help paragraph, so the two cannot drift apart."""
    command = load_command(name, SUBCOMMANDS[name].target)
    assert command.name == name
    assert command.help.strip().split("\n\n")[0].replace("\n", " ") == SUBCOMMANDS[name].help


def test_lazy_subcommands_run_through_the_main_app():
    runner = CliRunner()
    result = runner.invoke(app, ["toyworld", "--help"], terminal_width=200)
    assert result.exit_code == 0 and "preview" in result.output and "dataset" in result.output
    result = runner.invoke(app, ["cache", "info", "/nonexistent/cache"])
    assert result.exit_code == 2 and "no such script or cache folder" in result.output
    result = runner.invoke(app, ["toyworl"])
    assert result.exit_code == 2 and "toyworld" in result.output  # "Did you mean 'toyworld'?"
    group = typer.main.get_command(app)
    assert list(SUBCOMMANDS) == [n for n in group.list_commands(None) if n in SUBCOMMANDS]
