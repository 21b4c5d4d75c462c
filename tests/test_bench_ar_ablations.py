"""benchmarks/bench_ar_ablations.py: the copies-of-training-keyframes measure, its NAME=FOLDER arguments, its
table and what each run changed."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import bench_ar_ablations as bench


def _model(folder, **config):
    folder.mkdir(parents=True)
    (folder / "keyframe_ar.json").write_text(json.dumps({"num_tokens": 2, "token_dim": 8}))
    return folder


def test_nearest_distances_are_exact_and_chunked():
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(50, 2, 8, generator=gen)  # [M, N, d]
    queries = torch.randn(7, 2, 8, generator=gen)
    brute = torch.stack([(train.flatten(1) - q.flatten()).norm(dim=1).min() for q in queries])
    for chunk in (1, 6, 50, 1000):
        assert torch.allclose(bench.nearest_distances(queries, train, chunk=chunk).float(), brute, atol=1e-5)
    assert bench.nearest_distances(train[[3, 41]], train, chunk=8).tolist() == [0.0, 0.0]


def test_copies_of_training_rows_score_high_fresh_rows_low():
    gen = torch.Generator().manual_seed(1)
    train = torch.randn(400, 2, 8, generator=gen)
    held_out = torch.randn(200, 2, 8, generator=gen)  # the ground truth: as far from training as fresh data is
    threshold = bench.copy_threshold(bench.nearest_distances(held_out, train, chunk=64))
    assert bench.copy_fraction(bench.nearest_distances(held_out, train), threshold) == pytest.approx(0.05, abs=0.006)
    fresh = torch.randn(100, 2, 8, generator=gen)
    # copies, with noise far below the spacing of the training rows
    copies = train[torch.randint(0, 400, (100,), generator=gen)] + 0.01 * torch.randn(100, 2, 8, generator=gen)
    half = torch.cat([copies[:50], fresh[:50]])
    assert bench.copy_fraction(bench.nearest_distances(copies, train), threshold) == 1.0
    assert bench.copy_fraction(bench.nearest_distances(fresh, train), threshold) < 0.2
    assert 0.5 <= bench.copy_fraction(bench.nearest_distances(half, train), threshold) < 0.65


def test_ar_arguments_name_a_model_folder(tmp_path):
    run = tmp_path / "run"
    final = _model(run / "final")
    step = _model(run / "checkpoints" / "step-0000200" / "keyframe_ar")
    args = bench.parse_args(["--ar", f"recipe={final}", "--ar", f"no faces = {step.parent}", "--no-write"])
    assert args.ar == [("recipe", final), ("no faces", step)]
    assert args.seeds == list(bench.SEEDS) and args.shots == 80 and args.train_data is None


@pytest.mark.parametrize("spec, message", [
    ("just-a-folder", "is not NAME=FOLDER"),
    ("=somewhere", "is not NAME=FOLDER"),
    ("name=", "is not NAME=FOLDER"),
    ("name={tmp}/missing", "holds no keyframe AR model"),
])
def test_a_bad_ar_argument_is_a_parser_error(tmp_path, capsys, spec, message):
    with pytest.raises(SystemExit) as exit_:
        bench.parse_args(["--ar", spec.format(tmp=tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --ar" in err and message in err


def test_repeated_names_and_a_train_data_folder_without_index_are_parser_errors(tmp_path, capsys):
    model = _model(tmp_path / "m")
    for argv, message in ((["--ar", f"a={model}", "--ar", f"a={model}"], "must differ"),
                          (["--ar", f"ground truth={model}"], "must differ"),
                          (["--ar", f"a={model}", "--train-data", str(tmp_path)], "no index.json")):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
        assert message in capsys.readouterr().err


def test_config_changes_and_records_are_found_beside_the_model(tmp_path):
    base = {"faces": True, "dropout": 0.1, "head": "gmm", "eval_every": 200}
    recipe = _model(tmp_path / "a" / "final")
    (tmp_path / "a" / "train_config.json").write_text(json.dumps(base))
    (recipe / "training_summary.json").write_text(json.dumps({"steps": 300, "token_cos": 0.9}))
    step = _model(tmp_path / "b" / "checkpoints" / "step-0000300" / "keyframe_ar")
    (step.parent / "train_config.json").write_text(json.dumps({**base, "faces": False, "eval_every": 50}))
    (step.parent / "state.json").write_text(json.dumps({"step": 300, "token_cos": 0.8}))
    changes = bench.config_changes({"recipe": recipe, "no faces": step, "unknown": _model(tmp_path / "c")})
    assert changes == {"recipe": "", "no faces": "faces: False", "unknown": ""}
    assert bench.run_records(recipe)["token_cos"] == 0.9 and bench.run_records(step)["token_cos"] == 0.8
    assert bench.run_records(tmp_path / "c") == {}


def test_the_table_shows_dashes_without_training_data():
    from mdream.eval.evaluate import EvalReport

    report = EvalReport(backend="toy", movie_dir="m", script="s", n_shots=3, scene_accuracy=0.5, cast_accuracy=1.0)
    with_copies = bench.row([report], torch.tensor([1.0, 2.0, 3.0]), 1.5, {"token_cos": 0.9})
    without = bench.row([report, report], None, None, {})
    table = bench.markdown({"ground truth": with_copies, "x": without}).splitlines()
    assert table[2].startswith("| ground truth | 0.500 | 1.000 | - |") and "| 0.333 | 2.00 | 0.900 |" in table[2]
    assert table[3].endswith("| - | - | - |")


def test_a_run_trained_on_other_data_is_named(tmp_path):
    info = {"world_seed": 0, "seed": 0, "episodes": 500, "length": 64, "frame_size": 32}
    same = _model(tmp_path / "same" / "final")
    (tmp_path / "same" / "train_config.json").write_text(json.dumps(
        {"world_seed": 0, "data_seed": 0, "episodes": 500, "episode_length": 64, "frame_size": 32, "dropout": 0.0}))
    other = _model(tmp_path / "other" / "final")
    (tmp_path / "other" / "train_config.json").write_text(json.dumps(
        {"world_seed": 0, "data_seed": 0, "episodes": 300, "episode_length": 40, "frame_size": 32}))
    assert bench.other_training_data(same, info) == ""
    assert bench.other_training_data(other, info) == "episodes: 300 (set: 500), episode_length: 40 (set: 64)"
    assert bench.other_training_data(_model(tmp_path / "bare"), info) == ""
