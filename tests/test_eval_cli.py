"""`mdream eval` through Typer's CliRunner: table, JSON, and exit code 2 on bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mdream.toyworld.commands import toy_script


@pytest.fixture(scope="module")
def app():
    from mdream.cli.main import app as main_app

    return main_app


@pytest.fixture(scope="module")
def movie(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    script = toy_script(root / "script", seed=2, shots=10, size=64)
    return script, root / "script" / "groundtruth"


def _args(*args: str) -> list[str]:
    return ["eval", *args]


def test_eval_json(app, movie):
    script, gt = movie
    result = CliRunner().invoke(app, _args(str(gt), "--script", str(script), "--json"))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["backend"] == "toy" and data["n_shots"] == 10
    assert data["scene_accuracy"] >= 0.9


def test_eval_table(app, movie):
    script, gt = movie
    result = CliRunner().invoke(app, _args(str(gt), "--script", str(script)))
    assert result.exit_code == 0, result.output
    assert "scene accuracy" in result.output and "toy-FID" in result.output


def test_eval_bad_inputs_exit_2(app, movie, tmp_path):
    script, gt = movie
    result = CliRunner().invoke(app, _args(str(tmp_path / "nope"), "--script", str(script)))
    assert result.exit_code == 2 and "not found" in result.output
    result = CliRunner().invoke(app, _args(str(gt), "--script", str(script), "--backend", "real"))
    assert result.exit_code == 2 and "--clip-model" in result.output
    result = CliRunner().invoke(app, _args(str(gt), "--script", str(tmp_path / "missing.yaml"), "--json"))
    assert result.exit_code == 2 and json.loads(result.stdout)["error"] == "InputError"
