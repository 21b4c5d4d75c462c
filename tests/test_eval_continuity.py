"""Continuity of the toy world's hidden state in `mdream eval`: exact agreement with a fake analyser that
reads each shot's labels, unavailability without hidden-state heads, and the independent-hidden floor."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from mdream.eval import evaluate as evaluate_module
from mdream.eval.evaluate import evaluate_movie
from mdream.eval.frame_analyser import FrameAnalyser, FrameAnalyserConfig
from mdream.eval.metrics import VariantReading, chance_agreement, chance_corrected, variant_agreement
from mdream.toyworld import make_episode, make_world, write_script
from mdream.toyworld.episode import shot_labels
from mdream.toyworld.script_writer import independent_hidden_shots, write_independent_groundtruth
from mdream.toyworld.world import PALETTES, POSITIONS, TROUSER_COLOURS

MARK = 77  # blue value of pixel (0, 0) of the fake movies' frames; red + 256 * green is the shot index
SHOTS = 60


def test_variant_agreement_pairs_and_long_term_gap():
    readings = [VariantReading(0, "a", 1), VariantReading(19, "a", 1), VariantReading(20, "a", 2),
                VariantReading(45, "a", 1), VariantReading(3, "b", 0), VariantReading(3, "b", 1)]
    out = variant_agreement(readings)
    # a: consecutive (0,19) same, (19,20) differ, (20,45) differ; b: two readings in one shot are not a pair
    assert out["short_term_pairs"] == 3 and out["short_term"] == pytest.approx(1 / 3)
    # gaps >= 20 only: (0,20) differ, (0,45) same, (19,45) same, (20,45) differ; (0,19) is too close
    assert out["long_term_pairs"] == 4 and out["long_term"] == pytest.approx(0.5)
    assert variant_agreement(readings, long_term_gap=26)["long_term_pairs"] == 2  # (0,45), (19,45)
    empty = variant_agreement([])
    assert empty["short_term"] is None and empty["long_term"] is None and empty["short_term_pairs"] == 0


def test_chance_agreement_is_the_sum_of_squared_shares():
    assert chance_agreement([0, 1, 2] * 4) == pytest.approx(1 / 3)
    assert chance_agreement([0, 0, 0, 1]) == pytest.approx(0.75**2 + 0.25**2)
    assert chance_agreement([2, 2]) == pytest.approx(1.0)
    assert chance_agreement([]) is None


def test_chance_corrected_agreement_discounts_a_favoured_variant():
    # a model that reads variant 0 in 3 shots of 4 agrees 0.625 by chance: that much agreement is worth nothing
    chance = chance_agreement([0, 0, 0, 1])
    assert chance_corrected(chance, chance) == pytest.approx(0.0)
    assert chance_corrected(1.0, chance) == pytest.approx(1.0)
    assert chance_corrected(0.8, 0.5) == pytest.approx(0.6)
    assert chance_corrected(0.2, 0.5) == pytest.approx(-0.6)  # below chance
    assert chance_corrected(1.0, 1.0) is None and chance_corrected(None, 0.3) is None
    assert chance_corrected(0.5, None) is None


class FakeAnalyser:
    """Reads a fake movie's frames exactly: scene and cast from the episode, hidden variants from ``hidden``."""

    def __init__(self, world, episode, hidden: dict[int, tuple[int, list[int]]] | None, reads_hidden_state=True):
        self.world, self.episode, self.hidden = world, episode, hidden
        self.reads_hidden_state = reads_hidden_state
        self.config = SimpleNamespace(world_seed=world.seed, scene_ids=[s.id for s in world.scenes],
                                      character_ids=[c.id for c in world.characters], feature_dim=4)

    def analyse(self, frames):
        n = len(frames)
        index = frames[:, 0, 0, 0].astype(int) + 256 * frames[:, 0, 0, 1].astype(int)
        ours = frames[:, 0, 0, 2] == MARK
        out = {"scene": np.zeros(n, np.int64), "chars": np.full((n, 3), -1, np.int64),
               "features": np.random.default_rng(n).normal(size=(n, 4)).astype(np.float32)}
        if self.reads_hidden_state:
            out["palette"], out["trousers"] = np.zeros(n, np.int64), np.zeros((n, 3), np.int64)
        for row in np.flatnonzero(ours):
            labels = shot_labels(self.world, self.episode.shots[index[row]])
            out["scene"][row], out["chars"][row] = labels["scene"], labels["chars"]
            if self.reads_hidden_state:
                out["palette"][row], out["trousers"][row] = self.hidden[index[row]]
        return out


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A 60-shot toy script (no ground-truth renders) and a fake movie whose frame i says 'shot i'."""
    root = tmp_path_factory.mktemp("continuity")
    world = make_world(0)
    episode = make_episode(world, seed=5, n_shots=SHOTS)
    script = write_script(world, episode, root / "script", "continuity", 5, groundtruth=False)
    movie = root / "movie"
    (movie / "keyframes").mkdir(parents=True)
    for i in range(SHOTS):
        frame = np.full((64, 64, 3), 90, np.uint8)
        frame[0, 0] = (i % 256, i // 256, MARK)
        frame[8:40, 8 + (i % 20) : 30 + (i % 20)] = (i * 37 % 256, 40, 200)  # not copies of each other
        Image.fromarray(frame).save(movie / "keyframes" / f"{i:04d}.png")
    return SimpleNamespace(world=world, episode=episode, script=script, movie=movie)


def _evaluate(toy, monkeypatch, analyser):
    monkeypatch.setattr(FrameAnalyser, "from_pretrained", classmethod(lambda cls, folder: analyser))
    return evaluate_movie(toy.movie, toy.script)


def _truth(episode) -> dict[int, tuple[int, list[int]]]:
    return {i: (shot.palette, [next((m.trousers for m in shot.cast if m.position == p), 0) for p in POSITIONS])
            for i, shot in enumerate(episode.shots)}


def _expected_pairs(episode, trousers: bool) -> tuple[int, int]:
    owners: dict[str, list[int]] = {}
    for i, shot in enumerate(episode.shots):
        if not trousers:
            owners.setdefault(shot.scene_id, []).append(i)
        elif shot.camera != "close-up":
            for m in shot.cast:
                owners.setdefault(m.character_id, []).append(i)
    short = sum(len(idx) - 1 for idx in owners.values())
    long = sum(1 for idx in owners.values() for a in idx for b in idx if b - a >= 20)
    return short, long


def test_constant_variants_give_full_continuity(toy, monkeypatch):
    report = _evaluate(toy, monkeypatch, FakeAnalyser(toy.world, toy.episode, _truth(toy.episode)))
    assert report.continuity_unavailable is None
    for name in ("palette", "trousers"):
        assert getattr(report, f"{name}_continuity_short_term") == 1.0
        assert getattr(report, f"{name}_continuity_long_term") == 1.0
        short, long = _expected_pairs(toy.episode, name == "trousers")
        assert (getattr(report, f"n_{name}_short_term_pairs"), getattr(report, f"n_{name}_long_term_pairs")) == (
            short, long), name
        assert short > 20 and long > 20
    assert report.scene_accuracy == 1.0 and report.cast_accuracy == 1.0
    first = report.shots[0]
    assert first.predicted_palette == toy.episode.shots[0].palette


def test_variants_drawn_per_shot_give_chance(toy, monkeypatch):
    rng = np.random.default_rng(0)
    drawn = {i: (int(rng.integers(len(PALETTES))), rng.integers(len(TROUSER_COLOURS), size=3).tolist())
             for i in range(SHOTS)}
    report = _evaluate(toy, monkeypatch, FakeAnalyser(toy.world, toy.episode, drawn))
    for key in ("palette_continuity_short_term", "palette_continuity_long_term",
                "trousers_continuity_short_term", "trousers_continuity_long_term"):
        assert 0.15 <= getattr(report, key) <= 0.55, key  # chance: 1/3


def test_close_ups_are_skipped_for_trousers(toy, monkeypatch):
    """Trousers misread in every close-up (as a close-up shows no legs) leave trouser continuity at 1."""
    hidden = _truth(toy.episode)
    close_ups = [i for i, shot in enumerate(toy.episode.shots) if shot.camera == "close-up" and shot.cast]
    assert close_ups
    for i in close_ups:
        palette, trousers = hidden[i]
        hidden[i] = (palette, [(t + 1) % len(TROUSER_COLOURS) for t in trousers])
    report = _evaluate(toy, monkeypatch, FakeAnalyser(toy.world, toy.episode, hidden))
    assert report.trousers_continuity_short_term == 1.0 and report.trousers_continuity_long_term == 1.0
    assert all(report.shots[i].predicted_trousers == {} for i in close_ups)
    wide = next(i for i, shot in enumerate(toy.episode.shots) if shot.camera != "close-up" and shot.cast)
    assert report.shots[wide].predicted_trousers == {m.character_id: m.trousers for m in toy.episode.shots[wide].cast}


def test_analyser_without_hidden_heads_is_unavailable(toy, monkeypatch):
    report = _evaluate(toy, monkeypatch, FakeAnalyser(toy.world, toy.episode, None, reads_hidden_state=False))
    assert "hidden-state heads" in report.continuity_unavailable
    assert report.palette_continuity_short_term is None and report.trousers_continuity_long_term is None
    assert report.n_palette_short_term_pairs == 0
    assert report.scene_accuracy == 1.0  # the rest is scored as usual


def test_position_from_the_analyser_when_the_script_gives_none():
    view = SimpleNamespace(characters={"ada", "ben", "cleo"})
    member = lambda cid, pos: SimpleNamespace(id=cid, position=pos)  # noqa: E731
    shot = SimpleNamespace(cast=(member("ada", "left"), member("ben", None), member("zed", "right")))
    seen = {"left": "ada", "center": "ben", "right": "zed"}
    assert evaluate_module._trouser_positions(shot, seen, view) == {"ada": "left", "ben": "center"}
    # not seen, or seen twice, or only where the script puts someone else: skipped
    assert evaluate_module._trouser_positions(shot, {"left": "ben", "center": None, "right": None}, view) == {"ada": "left"}
    # seen at right too, but the script puts zed there: center is the one place left
    assert evaluate_module._trouser_positions(shot, {"left": None, "center": "ben", "right": "ben"}, view) == {
        "ada": "left", "ben": "center"}
    duo = SimpleNamespace(cast=(member("ada", "left"), member("ben", None)))
    assert evaluate_module._trouser_positions(duo, {"left": None, "center": "ben", "right": "ben"}, view) == {"ada": "left"}
    shared = SimpleNamespace(cast=(member("ada", "left"), member("cleo", "left")))
    assert evaluate_module._trouser_positions(shared, seen, view) == {}


def _random_analyser(folder, hidden: bool):
    world = make_world(0)
    config = FrameAnalyserConfig(num_scenes=len(world.scenes), num_characters=len(world.characters),
                                 widths=(4, 4, 4, 4), feature_dim=8, world_seed=0,
                                 scene_ids=[s.id for s in world.scenes], character_ids=[c.id for c in world.characters],
                                 num_palettes=len(PALETTES) if hidden else 0,
                                 num_trousers=len(TROUSER_COLOURS) if hidden else 0)
    FrameAnalyser(config).save_pretrained(folder)
    return folder


def test_eval_cli_reports_continuity_in_json_and_text(toy, tmp_path):
    from typer.testing import CliRunner

    from mdream.cli.main import app

    with_heads = _random_analyser(tmp_path / "with", hidden=True)
    without = _random_analyser(tmp_path / "without", hidden=False)
    args = ["eval", str(toy.movie), "--script", str(toy.script), "--analyser"]
    result = CliRunner().invoke(app, [*args, str(with_heads), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["continuity_unavailable"] is None
    for name in ("palette", "trousers"):
        for term in ("short_term", "long_term"):
            assert 0.0 <= data[f"{name}_continuity_{term}"] <= 1.0
            assert data[f"n_{name}_{term}_pairs"] > 0
    assert data["shots"][0]["predicted_palette"] in range(len(PALETTES))
    result = CliRunner().invoke(app, [*args, str(with_heads)])
    assert result.exit_code == 0 and "palette continuity, short-term" in result.output
    assert "continuity pairs: palette" in result.output
    result = CliRunner().invoke(app, [*args, str(without), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert "hidden-state heads" in data["continuity_unavailable"] and data["palette_continuity_short_term"] is None
    result = CliRunner().invoke(app, [*args, str(without)])
    assert result.exit_code == 0 and "continuity: unavailable" in result.output


def test_independent_hidden_state_redraws_every_shot(tmp_path):
    world = make_world(0)
    episode = make_episode(world, seed=3, n_shots=12)
    shots = independent_hidden_shots(world, episode, seed=3)
    assert [(s.scene_id, s.character_ids, s.camera) for s in shots] == [
        (s.scene_id, s.character_ids, s.camera) for s in episode.shots]
    first_scene = episode.shots[0].scene_id
    palettes = {s.palette for s in shots if s.scene_id == first_scene}
    assert len(palettes) > 1  # one scene, several palettes: no continuity left
    assert independent_hidden_shots(world, episode, seed=3) == shots  # seeded
    movie = write_independent_groundtruth(world, episode, tmp_path / "independent", 32, seed=3)
    assert len(list((movie / "keyframes").glob("*.png"))) == 12 and (movie / "shots.json").is_file()


def test_tokenizer_hidden_state_scores_count_visible_trousers_only():
    from mdream.toyworld.episode import CastMember, ShotSpec
    from mdream.training.evaluate_tokenizer import hidden_accuracy, hidden_labels

    world = make_world(0)
    a, b = world.characters[0].id, world.characters[1].id
    scene = world.scenes[0].id
    shots = [ShotSpec(scene, (CastMember(a, "left", "stand", "neutral", 2),), "wide", 1),
             ShotSpec(scene, (CastMember(a, "left", "stand", "neutral", 2), CastMember(b, "right", "stand", "neutral", 0)),
                      "close-up", 1),
             ShotSpec(scene, (CastMember(b, "center", "stand", "neutral", 1),), "medium", 0)]
    palette, trousers, visible = hidden_labels(shots)
    assert palette.tolist() == [1, 1, 0] and trousers.tolist() == [[2, -1, -1], [2, -1, 0], [-1, 1, -1]]
    assert visible.tolist() == [[True, False, False], [False, False, False], [False, True, False]]
    read = {"palette": np.array([1, 0, 0]), "trousers": np.array([[2, 0, 0], [0, 0, 1], [0, 1, 0]])}
    # the close-up's (wrong) trousers and the empty slots do not count
    assert hidden_accuracy(read, shots) == {"palette": pytest.approx(2 / 3), "trousers": 1.0}
    agree = hidden_accuracy(read, shots, reference={"palette": np.array([1, 0, 1]), "trousers": np.zeros((3, 3), int)})
    assert agree["palette_agree"] == pytest.approx(2 / 3) and agree["trousers_agree"] == 0.0


def _labelled_frames(n: int, seed: int):
    from mdream.eval.toy_samples import random_shot
    from mdream.training.data import FrameSet

    world = make_world(0)
    rng = np.random.default_rng(seed)
    shots = [random_shot(world, rng) for _ in range(n)]
    labels = [shot_labels(world, shot) for shot in shots]
    return FrameSet(np.zeros((n, 1, 1, 3), np.uint8), [""] * n, np.array([x["scene"] for x in labels]),
                    np.stack([x["chars"] for x in labels]), 0, shots)


def test_linear_probe_reads_the_hidden_state_the_tokens_carry():
    """Tokens that carry the palette and the visible trousers (one-hot, plus noise) are read back; noise is not."""
    import torch

    from mdream.training.evaluate_tokenizer import hidden_labels, linear_probe

    train, test = _labelled_frames(300, 1), _labelled_frames(200, 2)

    def tokens(frames, carry: bool):
        palette, trousers, visible = hidden_labels(frames.shots)
        noise = torch.from_numpy(np.random.default_rng(len(frames)).normal(size=(len(frames), 2, 8))).float()
        if not carry:
            return noise
        onehot = np.zeros((len(frames), 2, 12), np.float32)  # token 0: palette, token 1: trousers per position
        onehot[np.arange(len(frames)), 0, palette] = 3
        for p in range(3):
            rows = np.flatnonzero(visible[:, p])
            onehot[rows, 1, 3 * p + trousers[rows, p]] = 3
        return torch.cat([torch.from_numpy(onehot), noise], dim=-1)

    probe = linear_probe(tokens(train, True), train, tokens(test, True), test, epochs=100)
    assert {"palette", "trousers", "trousers_left", "trousers_center", "trousers_right"} <= set(probe)
    assert probe["palette"] == 1.0 and probe["trousers"] >= 0.95
    blind = linear_probe(tokens(train, False), train, tokens(test, False), test, epochs=100)
    assert blind["palette"] <= 0.55 and blind["trousers"] <= 0.55  # chance: 1/3


def test_toyworld_script_writes_the_independent_movie(tmp_path):
    from typer.testing import CliRunner

    from mdream.cli.main import app

    result = CliRunner().invoke(app, ["toyworld", "script", "-o", str(tmp_path / "s"), "--shots", "4", "--size", "32",
                                      "--independent-hidden", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    independent = tmp_path / "s" / "independent"
    assert data["independent"] == str(independent)
    assert len(list((independent / "keyframes").glob("*.png"))) == 4
    assert (independent / "shots.json").read_text() == (tmp_path / "s" / "groundtruth" / "shots.json").read_text()
