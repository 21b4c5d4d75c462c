"""Toy-world files: the script writer, the sharded dataset and its reader, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from mdream.toyworld import (
    ACTIONS,
    CAMERAS,
    ToyDataset,
    episode_seed,
    make_episode,
    make_world,
    render_keyframe,
    shot_labels,
    shot_text,
    write_dataset,
    write_script,
)
from mdream.toyworld.cli import app

WORLD = make_world(0)


def test_script_writer_output_loads_and_matches_the_world(tmp_path):
    try:
        from mdream.script import load_script, plan_script
    except ImportError:  # pragma: no cover - the script package is written in parallel
        pytest.skip("mdream.script.load_script is not available yet")
    episode = make_episode(WORLD, 4, 24)
    path = write_script(WORLD, episode, tmp_path / "movie", "Test", seed=4, size=32, faces_per_character=2)
    script = load_script(path)
    plan = plan_script(script)
    assert len(plan.shots) == 24
    assert script.output.width == script.output.height == 32
    assert {c.id for c in script.characters} <= set(WORLD.character_index)
    assert {s.id for s in script.scenes} <= set(WORLD.scene_index)
    for character in script.characters:
        assert len(character.faces) == 2
        for face in script.face_paths(character.id):
            assert Image.open(face).size == (112, 112)
    shots = [shot for arc in script.arcs for shot in arc.shots]
    for shot, truth in zip(shots, episode.shots, strict=True):
        assert shot.scene == truth.scene_id and shot.camera == truth.camera
        assert [c.id for c in shot.characters] == list(truth.character_ids)
        assert (shot.identifier, shot.descriptor) == shot_text(WORLD, truth)
        assert 2.0 <= shot.duration <= 4.0
    # Ground-truth movie folder: one keyframe per shot, ids in plan order.
    gt = tmp_path / "movie" / "groundtruth"
    ids = [s["id"] for s in json.loads((gt / "shots.json").read_text())["shots"]]
    assert ids == [p.id for p in plan.shots]
    assert sorted(p.name for p in (gt / "keyframes").iterdir()) == [f"{i:04d}.png" for i in range(24)]
    assert np.asarray(Image.open(gt / "keyframes" / "0000.png")).shape == (32, 32, 3)


def test_script_writer_is_deterministic(tmp_path):
    episode = make_episode(WORLD, 2, 8)
    a = write_script(WORLD, episode, tmp_path / "a", "T", seed=2, size=32)
    b = write_script(WORLD, episode, tmp_path / "b", "T", seed=2, size=32)
    assert a.read_text() == b.read_text()
    for f in sorted((tmp_path / "a").rglob("*.png")):
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes()


def test_dataset_round_trip_and_sharding(tmp_path):
    out = tmp_path / "ds"
    info = write_dataset(out, episodes=3, shots_per_episode=7, size=32, seed=5, shard_size=8, clip_frames=4,
                         faces_per_shot=1, progress=False, workers=2, chunk_size=3)
    assert info.n_shots == 21 and [s["rows"] for s in info.shards] == [8, 8, 5]
    assert sorted(p.name for p in out.glob("shard-*")) == [
        f"shard-{k:05d}.{ext}" for k in range(3) for ext in ("jsonl", "npz")]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["world_seed"] == 0 and meta["vocab"]["actions"] == list(ACTIONS)
    assert meta["vocab"]["cameras"] == list(CAMERAS)
    ds = ToyDataset(out)
    assert len(ds) == 21
    # Row 17 is episode 2, shot 3 (rows run episode by episode).
    item = ds[17]
    assert int(item["episode"]) == 2 and int(item["shot"]) == 3
    shot = make_episode(WORLD, episode_seed(5, 2), 7).shots[3]
    labels = shot_labels(WORLD, shot)
    assert item["chars"].tolist() == labels["chars"].tolist()
    assert item["actions"].tolist() == labels["actions"].tolist()
    assert int(item["scene"]) == labels["scene"] and int(item["camera"]) == labels["camera"]
    assert (item["identifier"], item["descriptor"]) == shot_text(WORLD, shot)
    assert item["frame"].shape == (32, 32, 3) and item["clip"].shape == (4, 32, 32, 3)
    assert item["faces"].shape == (1, 112, 112, 3) and item["face_ids"].shape == (1,)
    assert np.array_equal(item["clip"][0].numpy(), item["frame"].numpy())
    expected = render_keyframe(WORLD, shot, 32, np.random.default_rng([5, 0, 2, 3]))
    assert np.array_equal(item["frame"].numpy(), expected)
    assert ds[-1]["shot"] == 6
    # One process or two: the same bytes.
    single = write_dataset(tmp_path / "one", episodes=3, shots_per_episode=7, size=32, seed=5, shard_size=8,
                           clip_frames=4, faces_per_shot=1, progress=False, workers=1)
    assert single.n_shots == 21
    for k in range(3):
        with np.load(out / f"shard-{k:05d}.npz") as x, np.load(tmp_path / "one" / f"shard-{k:05d}.npz") as y:
            assert all(np.array_equal(x[key], y[key]) for key in x.files)
    # Bulk loading and the shard-at-a-time shuffling sampler.
    everything = ds.load_all(("frames", "chars"))
    assert everything["frames"].shape == (21, 32, 32, 3)
    assert np.array_equal(everything["frames"][17], item["frame"].numpy())
    assert [t["descriptor"] for t in ds.texts()][17] == item["descriptor"]
    from mdream.toyworld import ShardShuffleSampler

    order = list(ShardShuffleSampler(ds, seed=1))
    assert sorted(order) == list(range(21))
    shard_of = [0 if i < 8 else 1 if i < 16 else 2 for i in order]
    assert sum(a != b for a, b in zip(shard_of, shard_of[1:], strict=False)) == 2  # each shard visited once
    # Channels-first float view for learners, and a torch DataLoader over it.
    import torch

    loader = torch.utils.data.DataLoader(ToyDataset(out, channels_first=True), batch_size=5)
    batch = next(iter(loader))
    assert batch["frame"].shape == (5, 3, 32, 32) and batch["frame"].min() >= -1
    assert len(batch["descriptor"]) == 5


def test_cli_script_and_dataset(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["script", "--seed", "1", "--shots", "12", "--size", "32", "-o", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    script = yaml.safe_load((tmp_path / "s" / "script.yaml").read_text())
    assert sum(len(a["shots"]) for a in script["arcs"]) == 12
    result = runner.invoke(app, ["dataset", "--episodes", "2", "--shots-per-episode", "5", "--size", "32",
                                 "--clips", "--clip-frames", "3", "-o", str(tmp_path / "d"), "--quiet"])
    assert result.exit_code == 0, result.output
    ds = ToyDataset(tmp_path / "d")
    assert len(ds) == 10 and ds[0]["clip"].shape == (3, 32, 32, 3)
    result = runner.invoke(app, ["script", "--shots", "3", "--size", "32", "--clips", "-q", "-o", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(tmp_path / "c" / "groundtruth" / "movie.mp4"))
    assert next(reader)["size"] == (32, 32) and sum(1 for _ in reader) == 3 * 8
    assert len(list((tmp_path / "c" / "groundtruth" / "clips").glob("*.mp4"))) == 3
    result = runner.invoke(app, ["preview", "--size", "32", "-o", str(tmp_path / "sheet.png")])
    assert result.exit_code == 0 and (tmp_path / "sheet.png").exists()


def test_cli_rejects_bad_input(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["script", "--size", "48", "-o", str(tmp_path / "s")])
    assert result.exit_code == 2 and "size" in result.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "precious.txt").write_text("keep me")
    result = runner.invoke(app, ["dataset", "--episodes", "1", "-o", str(tmp_path / "full")])
    assert result.exit_code == 2 and "not empty" in result.output
    assert (tmp_path / "full" / "precious.txt").read_text() == "keep me"


def test_given_keyframes_script_points_at_the_ground_truth(tmp_path):
    from mdream.script import load_script, plan_script
    from mdream.toyworld.commands import toy_script

    plan = plan_script(load_script(toy_script(tmp_path / "sb", seed=2, shots=6, size=32, given_keyframes=True)))
    assert [s.keyframe for s in plan.shots] == [
        (tmp_path / "sb" / "groundtruth" / "keyframes" / f"{i:04d}.png").resolve() for i in range(6)
    ]
