"""Smoke tests of the evaluator's training entry points (tiny settings; slow: `make test-slow`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mdream.eval.frame_analyser import FrameAnalyser
from mdream.models.face_embedder import FaceIdentityEmbedder
from mdream.training.analyser import (
    AnalyserTrainingConfig,
    FaceTrainingConfig,
    train_face_embedder,
    train_frame_analyser,
)

pytestmark = pytest.mark.slow


def test_face_training_exports_and_resumes(tmp_path):
    config = FaceTrainingConfig(steps=2, batch_size=8, photo_pool=16, photo_refresh=2, world_seeds="0")
    onnx_path = train_face_embedder(config, tmp_path)
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-0000002"
    assert json.loads((tmp_path / "checkpoints" / "step-0000002" / "state.json").read_text())["step"] == 2
    assert json.loads((tmp_path / "train_config.json").read_text())["world_seeds"] == "0"
    assert FaceIdentityEmbedder(onnx_path).embed(torch.zeros(2, 112, 112, 3, dtype=torch.uint8).numpy()).shape == (2, 512)
    config.steps = 3
    train_face_embedder(config, tmp_path, resume="auto")
    assert json.loads((tmp_path / "checkpoints" / "step-0000003" / "state.json").read_text())["step"] == 3
    assert json.loads((tmp_path / "toy_face_recognition.json").read_text())["steps"] == 3


def test_analyser_training_saves_a_loadable_model(tmp_path):
    config = AnalyserTrainingConfig(steps=2, pool_size=16, refresh_per_step=2, batch_size=8, val_frames=16)
    folder = train_frame_analyser(config, tmp_path)
    model = FrameAnalyser.from_pretrained(folder)
    assert model.config.num_characters == 28 and len(model.config.scene_ids) == model.config.num_scenes
    pool = tmp_path / "pool.npz"
    assert pool.is_file()
    # a damaged pool cache (an interrupted write, a full disk) is rendered again, not a crash
    pool.write_bytes(pool.read_bytes()[:100])
    config.steps = 3
    train_frame_analyser(config, tmp_path)
    with np.load(pool) as data:
        assert data["frames"].shape[0] == 16
    assert json.loads((folder / "config.json").read_text())["steps"] == 3  # resumed from step 2


def test_motion_reader_training_saves_installs_and_resumes(tmp_path):
    from mdream.eval.motion_reader import MotionReader
    from mdream.training.motion_reader import (
        MotionReaderTrainingConfig,
        install_motion_reader,
        train_motion_reader,
    )

    config = MotionReaderTrainingConfig(steps=2, pool_size=16, refresh_per_step=1, batch_size=8, val_clips=8,
                                        clip_lengths="8,12")
    folder = train_motion_reader(config, tmp_path / "run")
    model = MotionReader.from_pretrained(folder)
    assert model.config.actions == ["stand", "walk", "wave", "jump", "sit"] and model.config.cameras[-1] == "still"
    facts = model.training_facts
    assert facts["steps"] == 2 and 0 <= facts["val_action_accuracy"] <= 1 and "held_read_as" in facts
    installed = install_motion_reader(folder, tmp_path / "eval")
    again = MotionReader.from_pretrained(installed)  # fp16 on disk, float32 in memory
    assert next(again.parameters()).dtype == torch.float32
    config.steps = 3
    train_motion_reader(config, tmp_path / "run")
    assert json.loads((folder / "config.json").read_text())["steps"] == 3  # resumed from step 2
