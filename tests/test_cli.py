"""The command line through Typer's CliRunner: commands, exit codes, messages."""

from __future__ import annotations

import json
import re

import yaml
from conftest import small_script_dict
from typer.testing import CliRunner

from mdream.cli.main import app

runner = CliRunner()

PIPELINE_COMMANDS = {"generate", "script-validate", "encode", "keyframes", "render", "video", "train", "status"}
OTHER_COMMANDS = {"script-schema", "toyworld", "eval", "cache", "models"}


def test_help_lists_exactly_the_commands():
    import typer

    group = typer.main.get_command(app)
    assert set(group.commands) == PIPELINE_COMMANDS | OTHER_COMMANDS
    result = runner.invoke(app, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    listed = set(re.findall(r"^\s*│\s+([a-z][a-z-]+)\s{2,}", result.output, flags=re.M))
    assert listed == PIPELINE_COMMANDS | OTHER_COMMANDS


def test_validate_ok(small_script):
    result = runner.invoke(app, ["script-validate", str(small_script)])
    assert result.exit_code == 0, result.output
    assert "Test Movie" in result.output and "6 in 1 arc" in result.output


def test_validate_json(small_script):
    result = runner.invoke(app, ["script-validate", "--json", str(small_script)])
    assert result.exit_code == 0
    (entry,) = json.loads(result.output)
    assert entry["ok"] and entry["shots"] == 6 and entry["total_seconds"] == 12.0


def test_validate_reports_located_problems_and_exit_2(small_script):
    data = small_script_dict()
    data["arcs"][0]["shots"][1]["camera"] = "closeup"
    data["arcs"][0]["shots"][2]["scene"] = "moon"
    small_script.write_text(yaml.safe_dump(data, sort_keys=False))
    result = runner.invoke(app, ["script-validate", str(small_script)], terminal_width=200)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert re.search(r"script\.yaml:\d+:\d+: arcs\[0\]\.shots\[1\]\.camera", result.output)
    assert re.search(r"script\.yaml:\d+:\d+: arcs\[0\]\.shots\[2\]\.scene", result.output)


def test_validate_missing_file_exit_2(tmp_path):
    result = runner.invoke(app, ["script-validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml" in result.output and "Traceback" not in result.output


def test_schema_is_json():
    result = runner.invoke(app, ["script-schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert {"characters", "scenes", "arcs"} <= set(schema["properties"])


def test_missing_video_model_fails_clearly(small_script, tmp_path):
    """A bundle without a video model (the toy bundle's components, its video model at a path not built): the video
    stage says so and how to get one."""
    from conftest import write_script

    from mdream.models.bundle import BUNDLES_DIR

    toy = yaml.safe_load((BUNDLES_DIR / "toy" / "bundle.yaml").read_text())
    components = {name: {"path": str((BUNDLES_DIR / "toy" / spec["path"]).resolve())}
                  for name, spec in toy["components"].items()}
    components["video"] = {"path": str(tmp_path / "not-built")}
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "bundle.yaml").write_text(yaml.safe_dump({"name": "no-video", "components": components}))
    data = small_script_dict()
    data["output"]["model_bundle"] = str(tmp_path / "bundle")
    script = write_script(tmp_path / "movie", data)
    result = runner.invoke(app, ["video", str(script), "--cache-dir", str(tmp_path / "c"), "--device", "cpu"])
    assert result.exit_code == 1
    assert "has no video model" in result.output and "mdream train video" in result.output


def test_bad_device_and_stage_exit_2(small_script):
    assert runner.invoke(app, ["encode", str(small_script), "--device", "tpu"]).exit_code == 2
    result = runner.invoke(app, ["encode", str(small_script), "--from-stage", "mux"])
    assert result.exit_code == 2 and "from-stage" in result.output


def test_status_on_empty_cache(small_script, tmp_path):
    result = runner.invoke(app, ["status", str(small_script), "--cache-dir", str(tmp_path / "c"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["stages"] == ["encode", "keyframes", "render", "video"]
    assert report["totals"] == {s: {"missing": 6} for s in report["stages"]}


def test_status_bad_script_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: [unclosed\n")
    result = runner.invoke(app, ["status", str(bad)])
    assert result.exit_code == 2 and "bad.yaml:" in result.output


def test_cache_dir_that_is_a_file_exit_2(small_script, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = runner.invoke(app, ["status", str(small_script), "--cache-dir", str(not_a_dir)])
    assert result.exit_code == 2 and "not a folder" in result.output


def test_python_dash_m_mdream_is_the_command():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "mdream", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "script-validate" in result.stdout
