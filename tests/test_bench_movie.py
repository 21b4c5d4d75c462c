"""benchmarks/bench_movie.py: its bundle with another video model, its skip without one, its tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import bench_movie
from mdream.eval.evaluate import EvalReport


def test_bundle_with_video_swaps_only_the_video_model(tmp_path):
    from mdream.models.bundle import ModelBundle

    video = tmp_path / "my-video"
    video.mkdir()
    folder = bench_movie.bundle_with_video(video, tmp_path / "bundle")
    bundle = ModelBundle.load(folder / "bundle.yaml")
    assert bundle.components["video"].path == video.resolve()
    shipped = ModelBundle.load(bench_movie.TOY_BUNDLE)
    for name in ("text_encoder", "keyframe_encoder", "keyframe_decoder", "keyframe_ar", "face_embedder"):
        assert bundle.components[name].path == shipped.components[name].path, name


def test_a_copied_script_names_the_bundle_and_finds_its_faces(tmp_path):
    from mdream.script import load_script

    bundle = bench_movie.bundle_with_video(tmp_path / "video", tmp_path / "bundle")
    script = bench_movie.copy_script("short", tmp_path, bundle)
    loaded = load_script(script)
    assert loaded.output.model_bundle == str(bundle.resolve())
    assert all((script.parent / face).is_file() for c in loaded.characters for face in c.faces)


def test_without_a_video_model_it_says_so_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_movie, "SHIPPED_VIDEO", tmp_path / "models" / "toy-video")
    monkeypatch.setattr(bench_movie, "score_script", lambda *a, **k: pytest.fail("scored without a video model"))
    bench_movie.main(["--scripts", "short"])
    assert "no video model" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench_movie.main(["--video-model", str(tmp_path), "--scripts", "short"])  # not a video model folder


def test_another_bundle_makes_the_movies_and_is_not_written(tmp_path, monkeypatch, capsys):
    """--bundle: the scripts name that bundle, its video model sets the frame size, RESULTS.md is left alone."""
    import json

    import yaml

    bundle = tmp_path / "rebuilt" / "bundles" / "toy"
    video = tmp_path / "rebuilt" / "models" / "toy-video"
    video.mkdir(parents=True)
    (video / "video.json").write_text(json.dumps({"width": 48}))
    bundle.mkdir(parents=True)
    (bundle / "bundle.yaml").write_text(yaml.safe_dump({"name": "toy", "components": {
        "video": {"path": "../../models/toy-video"}}}))
    assert bench_movie.bundle_video(bundle) == video.resolve()
    seen = []

    def fake_score(name, script, out, size, seed, with_movie):
        seen.append((yaml.safe_load(script.read_text())["output"]["model_bundle"], size))
        return {"name": name, "shots": 1, "duration": 1.0, "fps": 8, "video_seconds": 1.0, "generate_seconds": 1.0,
                "wall": 1.0, "reports": {}}

    monkeypatch.setattr(bench_movie, "score_script", fake_score)
    monkeypatch.setattr("benchmarks.results.update_section", lambda *a, **k: pytest.fail("wrote RESULTS.md"))
    bench_movie.main(["--bundle", str(bundle), "--scripts", "short", "--out", str(tmp_path / "out")])
    assert seen == [(str(bundle.resolve()), 48)]
    assert "the bundle" in capsys.readouterr().out
    for bad in (["--bundle", str(tmp_path)], ["--bundle", str(bundle), "--video-model", str(video)]):
        with pytest.raises(SystemExit):
            bench_movie.main([*bad, "--scripts", "short"])
    (bundle / "bundle.yaml").write_text(yaml.safe_dump({"name": "toy", "components": {}}))
    with pytest.raises(SystemExit):  # a bundle without a video model has no movie to score
        bench_movie.main(["--bundle", str(bundle), "--scripts", "short"])


def test_tables_give_pair_counts_and_time_per_second_of_video():
    truth = EvalReport(backend="toy", movie_dir="t", script="s", n_shots=2, scene_accuracy=1.0, cast_accuracy=0.9,
                       motion_agreement=1.0, n_motion_pairs=3, camera_agreement=0.5, n_camera_pairs=2,
                       identity_accuracy=0.75, n_faces=4, palette_continuity_short_term=1.0,
                       n_palette_short_term_pairs=1, motion_agreement_by_action={"walk": 1.0})
    movie = EvalReport(backend="toy", movie_dir="m", script="s", n_shots=2, motion_agreement=0.0, n_motion_pairs=3,
                       motion_agreement_by_action={"walk": 0.0, "stand": 1.0})
    result = {"name": "short", "shots": 2, "duration": 4.0, "fps": 8, "video_seconds": 10.0, "generate_seconds": 20.0,
              "wall": 25.0, "reports": {"movie": movie, "ground truth": truth}}
    scores = bench_movie.scores_table([result]).splitlines()
    assert "ceiling" in scores[2] and "generated movie" in scores[3]  # ground truth first, whatever the dict order
    assert "| 1.000 (3) | 0.500 (2) |" in scores[2] and "0.750 (4)" in scores[2] and "1.000 (1) / n/a (0)" in scores[2]
    actions = bench_movie.actions_table([result]).splitlines()
    assert actions[0] == "| script | movie | stand | walk |" and actions[2].endswith("| - | 1.000 |")
    assert "| 10.0 s | 2.50 s | 20.0 s | 25.0 s |" in bench_movie.time_table([result], threads=1)


def test_the_benchmark_runs_with_make_bench():
    from benchmarks.run import BENCHMARKS

    assert "benchmarks.bench_movie" in BENCHMARKS
    assert Path(bench_movie.__file__).parent.name == "benchmarks"
