"""The single-clip motion benchmark: its scoring against fake readers, and a run with a tiny random video model
(saved and loaded through ``from_pretrained``) that prints its table and leaves RESULTS.md alone."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from test_video import tiny_video_model

from benchmarks import bench_video_motion
from benchmarks.results import RESULTS
from mdream.errors import InputError


def _member(position: str, action: str) -> SimpleNamespace:
    return SimpleNamespace(position=position, action=action)


class FakeReader:
    config = SimpleNamespace(actions=["stand", "walk", "wave", "jump", "sit"])

    def __init__(self, actions):
        self.actions = np.asarray(actions)

    def read(self, clips):
        assert len(clips) == len(self.actions)
        return {"actions": self.actions}


class FakeAnalyser:
    """Reads the cast slots off pixel (0, 0..2) of each frame."""

    def analyse(self, frames):
        return {"chars": frames[:, 0, :3, 0].astype(np.int64)}


def test_score_counts_moving_members_slots_and_last_frame_error():
    shots = [(SimpleNamespace(cast=[_member("left", "walk"), _member("right", "stand")]), None),
             (SimpleNamespace(cast=[_member("center", "wave"), _member("right", "sit")]), None)]
    truth = [np.zeros((4, 8, 8, 3), np.uint8), np.zeros((4, 8, 8, 3), np.uint8)]
    shots = [(shot, clip) for (shot, _), clip in zip(shots, truth, strict=True)]
    clips = [clip.copy() for clip in truth]
    clips[0][-1] = 10  # last frame off by 10 everywhere: every slot read differs from the keyframe's
    clips[1][-1, 0, 2, 0] = 7  # one slot of three changes
    # shot 0: left walks, read as walk; shot 1: centre waves, read as jump; right sits, read as sit
    reader = FakeReader([[1, -1, 0], [-1, 3, 4]])
    row = bench_video_motion.score(shots, clips, FakeAnalyser(), reader)
    assert row["moving_members"] == 3 and row["moving_read"] == pytest.approx(2 / 3, abs=1e-3)
    assert row["frame_error"] == pytest.approx((10 + 7 / (8 * 8 * 3)) / 2, abs=0.01)
    assert row["cast_kept"] == pytest.approx((0 + 2 / 3) / 2, abs=1e-3)
    assert row["by_action"] == {"walk": 1.0, "wave": 0.0, "sit": 1.0}  # no jumper in these shots
    table = bench_video_motion.markdown({"model": row})
    assert row["walk_travel"] == 0.0  # the walker's clip does not move
    assert "| walk | wave | jump | sit | walkers' travel (px) |" in table and "| 1.00 | 0.00 |  | 1.00 | 0.00 |" in table


def test_walk_travel_is_the_shift_of_the_walkers_third_the_way_it_walks():
    clip = np.zeros((4, 24, 24, 3), np.uint8)
    clip[0, :, 2:4] = clip[0, :, 18:20] = 200  # a bar in the left third and one in the right third
    clip[-1, :, 4:6] = 200  # the left one went 2 px right (its way) ...
    clip[-1, :, 19:21] = 200  # ... the right one 1 px right (against its way)
    assert bench_video_motion.walk_travel(clip, "left") == 2
    assert bench_video_motion.walk_travel(clip, "right") == -1
    assert bench_video_motion.walk_travel(np.repeat(clip[:1], 4, 0), "left") == 0  # held still


def test_denoised_travel_scores_the_walkers_one_step_estimates_at_each_sigma(tmp_path):
    from mdream.models.video import ImageToVideoModel

    tiny_video_model(tmp_path, clip_length=4)
    model = ImageToVideoModel.from_pretrained(tmp_path / "video")
    clip = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    walker = SimpleNamespace(cast=[_member("left", "walk"), _member("right", "walk")], camera="wide")
    still = SimpleNamespace(cast=[_member("center", "wave")], camera="wide")
    travel = bench_video_motion.denoised_travel(model, [(walker, clip), (still, clip)], [0.01, 5.0], fps=8)
    assert list(travel) == [0.01, 5.0] and all(np.isfinite(v) and abs(v) <= 6 for v in travel.values())
    assert np.isnan(bench_video_motion.denoised_travel(model, [(still, clip)], [1.0], fps=8)[1.0])  # no walker


def test_a_run_with_a_tiny_model_writes_its_json_and_not_results(tmp_path):
    tiny_video_model(tmp_path, clip_length=4)
    before = RESULTS.read_text()
    out = tmp_path / "motion.json"
    bench_video_motion.main(["--model", str(tmp_path / "video"), "--shots", "3", "--steps", "1", "2",
                             "--denoise-sigmas", "0.1", "3", "--json", str(out)])
    report = json.loads(out.read_text())
    assert RESULTS.read_text() == before
    assert list(report["rows"]) == ["ground truth", "the keyframe copied", "model, 1 Euler steps",
                                    "model, 2 Euler steps"]
    truth, copied = report["rows"]["ground truth"], report["rows"]["the keyframe copied"]
    assert truth["frame_error"] == 0.0 and copied["frame_error"] > 0  # the true clips move
    assert report["clip_length"] == 4 and report["shots"] == 3
    assert list(report["denoised_travel"]) == ["0.1", "3.0"]  # JSON keys
    assert all(r["moving_members"] == truth["moving_members"] for r in report["rows"].values())


def test_action_guidance_scales_are_rows_at_each_step_count(tmp_path):
    tiny_video_model(tmp_path, clip_length=4)
    out = tmp_path / "motion.json"
    bench_video_motion.main(["--model", str(tmp_path / "video"), "--shots", "2", "--steps", "1",
                             "--action-guidance", "1", "2", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert list(rows)[2:] == ["model, 1 Euler steps, action guidance 1", "model, 1 Euler steps, action guidance 2"]
    assert all(set(r["by_action"]) <= set(bench_video_motion.MOVING) for r in rows.values())
    with pytest.raises(InputError, match="action_guidance_scale must be >= 1"):  # each scale reaches the pipeline
        bench_video_motion.main(["--model", str(tmp_path / "video"), "--shots", "1", "--steps", "1",
                                 "--action-guidance", "0.5"])
