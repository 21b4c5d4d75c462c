"""`mdream generate`: the run report (beside the movie, and on stdout with --json), the final table,
and several scripts in one command. Over the fake pipeline: real runner and cache, fake compute."""

from __future__ import annotations

import json

import pytest
from conftest import small_script_dict, write_script
from typer.testing import CliRunner

import mdream
from mdream.cli.main import app
from mdream.errors import InputError
from mdream.stages.options import RunOptions
from mdream.stages.run import generate_many

runner = CliRunner()


def test_json_prints_the_report_that_is_written_beside_the_movie(fake_pipeline, small_script, tmp_path):
    movie = tmp_path / "out" / "film.mp4"
    args = ["generate", str(small_script), "-o", str(movie), "--cache-dir", str(tmp_path / "c"), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)  # stdout is the JSON and nothing else
    assert report == json.loads((tmp_path / "out" / "film.report.json").read_text())
    assert report["output"] == str(movie) and report["movie_kind"] == "animatic" and movie.is_file()
    assert report["mdream_version"] == mdream.__version__ and report["seed"] == small_script_dict()["seed"]
    assert report["bundle"]["name"] == "toy" and len(report["bundle"]["identity"]) == 64
    assert report["bundle"]["components"]["video"] == "absent:video"
    stages = {s["stage"]: s for s in report["stages"]}
    assert list(stages) == ["encode", "keyframes", "render", "export"]
    assert len(stages["encode"]["produced"]) == 6 and len(set(stages["render"]["keys"].values())) == 6
    assert stages["export"]["outputs"] and all(path.startswith(str(tmp_path / "out" / "film")) for path in
                                               stages["export"]["outputs"])
    assert report["seconds"] >= sum(s["seconds"] for s in report["stages"]) * 0.99

    again = json.loads(runner.invoke(app, args).output)  # a rerun reuses every key
    for stage in again["stages"]:
        assert not stage["produced"] and stage["keys"] == stages[stage["stage"]]["keys"]
    assert [len(s["reused"]) for s in again["stages"]] == [6, 6, 6, 1]


def test_the_final_table_shows_each_stage(fake_pipeline, small_script, tmp_path):
    result = runner.invoke(app, ["generate", str(small_script), "-o", str(tmp_path / "film.mp4"), "--cache-dir",
                                 str(tmp_path / "c")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for text in ("stage", "made", "reused", "by other process", "encode", "render", "export", "film.report.json"):
        assert text in result.output


def test_several_scripts_go_into_the_output_folder(fake_pipeline, tmp_path):
    one = write_script(tmp_path / "a", small_script_dict())
    data = small_script_dict(n_shots=3)
    data["title"] = "Second"
    two = write_script(tmp_path / "b", data, name="second.yaml")
    result = runner.invoke(app, ["generate", str(one), str(two), "-o", str(tmp_path / "movies"), "--json"])
    assert result.exit_code == 0, result.output
    reports = json.loads(result.output)
    assert [r["title"] for r in reports] == ["Test Movie", "Second"]
    assert sorted(p.name for p in (tmp_path / "movies").iterdir()) == [
        "script", "script.mp4", "script.report.json", "second", "second.mp4", "second.report.json"]
    # no -o: each movie beside its script
    results = generate_many([one, two], None, RunOptions(quiet=True))
    assert [r.output for r in results] == [one.with_suffix(".mp4"), two.with_suffix(".mp4")]
    assert all(r.output.is_file() and r.report_path.is_file() for r in results)


def test_several_scripts_need_a_folder_and_distinct_names(fake_pipeline, tmp_path):
    one = write_script(tmp_path / "a", small_script_dict())
    two = write_script(tmp_path / "b", small_script_dict())  # also script.yaml
    with pytest.raises(InputError, match="folder"):
        generate_many([one, two], tmp_path / "x.mp4")
    with pytest.raises(InputError, match="would both write"):
        generate_many([one, two], tmp_path / "movies")
    assert not (tmp_path / "movies").exists()
    result = runner.invoke(app, ["generate", str(one), str(two), "-o", str(tmp_path / "movies")])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_a_bad_script_among_several_fails_before_any_work(fake_pipeline, tmp_path):
    good = write_script(tmp_path / "a", small_script_dict())
    bad = tmp_path / "b" / "bad.yaml"
    bad.parent.mkdir()
    bad.write_text("title: [unclosed\n")
    result = runner.invoke(app, ["generate", str(good), str(bad), "-o", str(tmp_path / "movies")])
    assert result.exit_code == 2
    assert not (tmp_path / "movies").exists() and not (tmp_path / "a" / ".mdream").exists()
