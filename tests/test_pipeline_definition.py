"""The pipeline definition: the runner, status and the CLI derive from one registry of stages; the
movie folder is a cached per-movie step; the video stage's keys follow the output settings."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import small_script_dict
from PIL import Image
from pipeline_fakes import FakeRender

from mdream.errors import InputError, NotBuiltError
from mdream.stages import registry
from mdream.stages.options import RunOptions
from mdream.stages.pipeline import Project, plan_keys
from mdream.stages.preview import read_video_info
from mdream.stages.run import generate, movie_dir_for, run_pipeline, run_stages
from mdream.stages.status import script_status


def _opts(**kw):
    return RunOptions(quiet=True, **kw)


def test_the_builtin_pipeline_is_the_one_list():
    assert registry.stage_names() == ("encode", "keyframes", "render", "export", "video")
    assert registry.shot_stage_names() == ("encode", "keyframes", "render", "video")
    with pytest.raises(InputError, match="encode, keyframes, render, export, video"):
        RunOptions(from_stage="mux")


def test_registering_checks_the_order():
    class Orphan(FakeRender):
        name = "orphan"
        upstream_stages = ("nowhere",)

    with pytest.raises(ValueError, match="registered before"):
        registry.register_stage(Orphan)


def test_runner_follows_the_registry_and_exports_after_render(fake_pipeline, small_script, tmp_path):
    assert fake_pipeline == ("encode", "keyframes", "render", "export", "video")
    movie = tmp_path / "out" / "movie.mp4"
    result = generate(small_script, movie, _opts(), until="render")
    assert [r.stage for r in result.reports] == ["encode", "keyframes", "render", "export"]
    assert (result.movie_dir, result.output) == (movie_dir_for(movie), None) and not movie.exists()
    folder = movie_dir_for(movie)
    assert sorted(p.name for p in (folder / "keyframes").iterdir()) == [f"{i:04d}.png" for i in range(6)]
    assert [s["id"] for s in json.loads((folder / "shots.json").read_text())["shots"]][:2] == ["act1-001", "act1-002"]
    # the whole pipeline with a bundle that has no video model: the movie is the animatic
    other = tmp_path / "other" / "movie.mp4"
    result = generate(small_script, other, _opts(), until="video")
    assert (result.output, result.movie_kind) == (other, "animatic")
    assert [r.stage for r in result.reports] == ["encode", "keyframes", "render", "export"]
    assert len(list((tmp_path / "other" / "movie" / "keyframes").glob("*.png"))) == 6
    plan = Project.open(small_script, _opts()).plan
    info = read_video_info(other)
    assert info.frames == round(plan.total_duration * plan.output.fps) and info.fps == plan.output.fps
    assert other.read_bytes() == (tmp_path / "other" / "movie" / "animatic.mp4").read_bytes()
    with Image.open(tmp_path / "other" / "movie" / "storyboard.png") as sheet:
        assert sheet.width > 6 * 64
    with pytest.raises(InputError, match=r"\.mp4"):
        generate(small_script, tmp_path / "movie.avi", _opts())
    # one stage alone: only the per-movie steps right after it run
    _, reports = run_stages(small_script, "keyframes", _opts())
    assert [r.stage for r in reports] == ["keyframes"]
    _, reports = run_stages(small_script, "render", _opts(), movie_dir=folder)
    assert [(r.stage, len(r.reused)) for r in reports] == [("render", 6), ("export", 1)]


def test_the_export_step_is_skipped_only_when_its_record_and_outputs_match(fake_pipeline, small_script, tmp_path):
    out = tmp_path / "movie"

    def export_report(**kw):
        return run_pipeline(small_script, "render", _opts(**kw), movie_dir=out)[1][-1]

    assert export_report().produced == [str(out)]
    assert export_report().reused == [str(out)]
    (out / "keyframes" / "0003.png").unlink()  # an output gone
    assert export_report().produced == [str(out)]
    assert (out / "keyframes" / "0003.png").is_file()
    (out / "shots.json").write_text("{}")  # an output edited
    assert export_report().produced == [str(out)]
    assert export_report().reused == [str(out)]
    assert export_report(from_stage="export").produced == [str(out)]
    # another target folder is another key
    other = run_pipeline(small_script, "render", _opts(), movie_dir=tmp_path / "elsewhere")[1]
    assert other[-1].produced == [str(tmp_path / "elsewhere")]
    # output settings are part of the key: a new fps re-exports, the renders are reused
    data = small_script_dict()
    data["output"]["fps"] = 24
    small_script.write_text(yaml.safe_dump(data, sort_keys=False))
    reports = run_pipeline(small_script, "render", _opts(), movie_dir=out)[1]
    assert len(reports[2].reused) == 6 and reports[-1].produced == [str(out)]
    status = script_status(small_script, RunOptions())
    assert status.stages == ["encode", "keyframes", "render", "video"]
    states = {s.target: s.state for s in status.steps}
    assert states[str(out)] == "done" and states[str(tmp_path / "elsewhere")] == "stale"


def test_video_keys_follow_the_output_settings_render_keys_do_not(small_script):
    def keys():
        project = Project.open(small_script, RunOptions())
        return plan_keys(project, registry.new_stages())

    before = keys()
    data = small_script_dict()
    data["output"]["fps"] = 12
    small_script.write_text(yaml.safe_dump(data, sort_keys=False))
    after = keys()
    for stage in ("encode", "keyframes", "render"):
        assert after[stage] == before[stage]
    assert all(a != b for a, b in zip(after["video"], before["video"], strict=True))
    assert after["export"] != before["export"]
    data["output"]["fps"] = 8
    data["arcs"][0]["shots"][2]["duration"] = 3.0  # a longer shot: more frames
    small_script.write_text(yaml.safe_dump(data, sort_keys=False))
    longer = keys()
    # shot 3 changes, and through the keyframe chain every shot after it; the ones before stay
    assert [a != b for a, b in zip(longer["video"], before["video"], strict=True)] == [False, False] + [True] * 4


def test_a_bundle_with_a_video_model_goes_through_the_video_stage(fake_pipeline, tmp_path):
    from conftest import write_script

    from mdream.models.bundle import BUNDLES_DIR

    toy = yaml.safe_load((BUNDLES_DIR / "toy" / "bundle.yaml").read_text())
    components = {name: {"path": str((BUNDLES_DIR / "toy" / spec["path"]).resolve())}
                  for name, spec in toy["components"].items()}
    (tmp_path / "video-model").mkdir()
    components["video"] = {"path": str(tmp_path / "video-model")}
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "bundle.yaml").write_text(yaml.safe_dump({"name": "with-video", "components": components}))
    data = small_script_dict()
    data["output"]["model_bundle"] = str(tmp_path / "bundle")
    script = write_script(tmp_path / "movie", data)
    with pytest.raises(NotBuiltError, match="fake video"):
        generate(script, tmp_path / "out" / "movie.mp4", _opts())
    assert not (tmp_path / "out" / "movie.mp4").exists()  # no animatic passed off as the movie
    assert (tmp_path / "out" / "movie" / "animatic.mp4").is_file()  # the previews were written first


def test_a_rerun_removes_the_preview_temp_files_a_killed_run_left(fake_pipeline, small_script, tmp_path):
    movie = tmp_path / "out" / "movie.mp4"
    generate(small_script, movie, _opts())
    leftovers = [tmp_path / "out" / "movie" / ".animatic.mp4.tmp-999999999-0123abcd",
                 tmp_path / "out" / "movie" / ".storyboard.png.tmp-999999999-0123abcd",
                 tmp_path / "out" / ".movie.mp4.tmp-999999999-0123abcd"]
    for path in leftovers:
        path.write_bytes(b"partial")
    generate(small_script, movie, _opts(from_stage="export"))
    assert not any(path.exists() for path in leftovers)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["movie", "movie.mp4", "movie.report.json"]
