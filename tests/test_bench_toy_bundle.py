"""The toy-bundle comparison: its step table from a bundle run's manifest, the held-out numbers of both trees, the
movie table; a run without a manifest is a clear exit."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_toy_bundle
from benchmarks.results import RESULTS
from mdream.errors import InputError
from mdream.training.toy_bundle import MANIFEST, STAGED, STEPS


def _run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    steps = [{"name": "clip", "status": "done", "minutes": 21.2, "attempts": 3},
             {"name": "face_embedder", "status": "done", "minutes": 2.6, "attempts": 1},
             {"name": "tokenizer", "status": "not available", "note": "stopped"}]
    (run / MANIFEST).write_text(json.dumps({"bundle": "toy", "smoke": False, "git_commit": "abcdef0123",
                                            "dest": None, "steps": steps}))
    clip = run / STAGED / "models" / "toy-clip"
    clip.mkdir(parents=True)
    (clip / "training_summary.json").write_text(json.dumps({"steps": 600, "retrieval_top1_of_256": 0.84}))
    analyser = run / STAGED / "eval" / "frame_analyser"
    analyser.mkdir(parents=True)
    (analyser / "config.json").write_text(json.dumps({"val_scene_accuracy": 0.998, "val_trousers_accuracy": 1.0}))
    return run


def test_steps_table_counts_only_finished_steps(tmp_path):
    table, expected, took = bench_toy_bundle.steps_table(json.loads((_run(tmp_path) / MANIFEST).read_text()))
    by_name = {s.name: s for s in STEPS}
    assert expected == by_name["clip"].expected_minutes + by_name["face_embedder"].expected_minutes
    assert took == pytest.approx(23.8)
    assert "| clip | clip-toy | 24 | 21.2 | 3 | done |" in table
    assert "| tokenizer | tokenizer-toy-cpu | 120 | - | - | not finished |" in table
    assert len(table.splitlines()) == 2 + len(STEPS) + 1


def test_checks_table_puts_both_trees_side_by_side(tmp_path):
    run = _run(tmp_path)
    shipped = tmp_path / "assets"
    (shipped / "models" / "toy-clip").mkdir(parents=True)
    (shipped / "models" / "toy-clip" / "training_summary.json").write_text(json.dumps({"retrieval_top1_of_256": 0.826}))
    # a model exported from a checkpoint has its held-out numbers in state.json instead
    (shipped / "models" / "toy-ar").mkdir(parents=True)
    (shipped / "models" / "toy-ar" / "state.json").write_text(json.dumps({"step": 2995, "token_cos": 0.9218}))
    table = bench_toy_bundle.checks_table(run / STAGED, shipped)
    assert "| clip | retrieval top-1 of 256 | 0.826 | 0.840 |" in table
    assert "| ar | held-out token cosine | 0.922 | - |" in table
    assert "| analyser | scene | - | 0.998 |" in table and "| analyser | palette | - | - |" in table
    assert "| motion_reader | actions | - | - |" in table


def test_movies_table_and_a_run_without_write(tmp_path, capsys):
    movie = {"scene_accuracy": 0.84, "cast_accuracy": 0.8, "identity_accuracy": 0.7,
             "palette_continuity_long_term": None, "motion_agreement": 0.38, "camera_agreement": 0.9}
    table = bench_toy_bundle.movies_table([{"name": "short", "reports": {"movie": movie}}],
                                          [{"name": "short", "reports": {"movie": {**movie, "scene_accuracy": 0.9}}}])
    assert "| short.yaml | shipped | 0.840 | 0.800 | 0.700 | - | 0.380 | 0.900 |" in table
    assert "| short.yaml | rebuilt | 0.900 |" in table
    before = RESULTS.read_text()
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    bench_toy_bundle.main(["--run", str(_run(tmp_path / "x")), "--no-write"])
    assert "| clip | retrieval top-1 of 256 |" in capsys.readouterr().out and RESULTS.read_text() == before
    with pytest.raises(SystemExit, match="no manifest.json"):
        bench_toy_bundle.main(["--run", str(tmp_path / "nothing"), "--no-write"])
    (tmp_path / "x" / "run" / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="unreadable bundle manifest"):
        bench_toy_bundle.main(["--run", str(tmp_path / "x" / "run"), "--no-write"])
    _run(tmp_path / "y")
    with pytest.raises(SystemExit, match="no rebuilt bundle"):
        bench_toy_bundle.main(["--run", str(tmp_path / "y" / "run"), "--movies", "short", "--no-write"])
