"""Smoke tests of the evaluator's training entry points (tiny settings; slow: `make test-slow`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mdream.eval.frame_analyser import FrameAnalyser
from mdream.eval.training import (
    AnalyserTrainingConfig,
    FaceTrainingConfig,
    train_face_embedder,
    train_frame_analyser,
)
from mdream.models.face_embedder import FaceIdentityEmbedder

pytestmark = pytest.mark.slow


def test_face_training_exports_and_resumes(tmp_path):
    config = FaceTrainingConfig(steps=2, batch_size=8, photo_pool=16, photo_refresh=2, world_seeds=(0,), threads=1)
    onnx_path = train_face_embedder(config, tmp_path)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 2
    assert (tmp_path / "hparams.json").is_file()
    assert FaceIdentityEmbedder(onnx_path).embed(torch.zeros(2, 112, 112, 3, dtype=torch.uint8).numpy()).shape == (2, 512)
    config.steps = 3
    train_face_embedder(config, tmp_path, resume="auto")
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 3


def test_analyser_training_saves_a_loadable_model(tmp_path):
    config = AnalyserTrainingConfig(steps=2, pool_size=16, refresh_per_step=2, batch_size=8, threads=1)
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
