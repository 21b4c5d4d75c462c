"""The evaluator's metric functions on hand-made inputs (no models, fast)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from mdream.eval.face_embedder import ArcMarginHead
from mdream.eval.metrics import (
    FaceObservation,
    clip_score,
    copy_fraction,
    frechet_distance,
    identity_accuracy,
    identity_consistency,
    mean_pairwise_distance,
)


def _unit(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def test_identity_consistency_short_long_and_margin():
    a, a2, b = _unit([1, 0, 0]), _unit([1, 1, 0]), _unit([0, 0, 1])
    faces = [
        FaceObservation(0, "a", a),
        FaceObservation(1, "a", a2),   # consecutive with shot 0: cos 0.707
        FaceObservation(30, "a", a),   # consecutive with shot 1 (cos 0.707); 30 and 29 shots apart
        FaceObservation(1, "b", b),
    ]
    out = identity_consistency(faces, long_term_gap=20)
    assert out["short_term_pairs"] == 2
    assert out["short_term"] == pytest.approx(1 / math.sqrt(2))
    # long-term pairs: (0, 30) cos 1 and (1, 30) cos 0.707
    assert out["long_term_pairs"] == 2
    assert out["long_term"] == pytest.approx((1 + 1 / math.sqrt(2)) / 2)
    # pairs in different shots: a0-a1 .707, a0-a30 1, a1-a30 .707 (same); a0-b 0, a30-b 0 (different)
    assert out["margin"] == pytest.approx((2 / math.sqrt(2) + 1) / 3)


def test_identity_consistency_empty_is_none():
    out = identity_consistency([])
    assert out["short_term"] is None and out["long_term"] is None and out["margin"] is None


def test_identity_accuracy_nearest_reference():
    refs = {"a": _unit([1, 0]), "b": _unit([0, 1])}
    faces = [FaceObservation(0, "a", _unit([0.9, 0.1])), FaceObservation(1, "b", _unit([0.8, 0.2])),
             FaceObservation(2, "ghost", _unit([0, 1]))]  # no reference: skipped
    assert identity_accuracy(faces, refs) == pytest.approx(0.5)
    assert identity_accuracy(faces, {}) is None


def test_frechet_distance_zero_for_same_and_grows_with_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # Same covariance, mean shifted by 2 in every dimension: distance ~ |mu1 - mu2|^2 = 32.
    assert frechet_distance(a + 2.0, a) == pytest.approx(32.0, rel=1e-3)
    assert frechet_distance(a[:1], a) is None


def test_diversity_and_copy_fraction():
    rng = np.random.default_rng(0)
    # Smooth random images (8x8 colour fields blown up), like keyframes rather than noise.
    frames = [np.asarray(Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((64, 64), Image.BILINEAR))
              for _ in range(4)]
    assert copy_fraction(frames) == 0.0
    assert copy_fraction([frames[0]] * 4) == 1.0
    # One copied pair out of C(4, 2) = 6 pairs; a resized copy with faint noise is still a copy.
    small = np.asarray(Image.fromarray(frames[0]).resize((32, 32), Image.BILINEAR)).astype(np.float64)
    small = np.clip(small + rng.normal(0, 1.0, small.shape), 0, 255).astype(np.uint8)
    assert copy_fraction(frames[:3] + [small]) == pytest.approx(1 / 6)
    assert mean_pairwise_distance(np.zeros((5, 3))) == 0.0
    assert mean_pairwise_distance(np.array([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(5.0)


def test_clip_score_is_scaled_clipped_cosine():
    img = np.array([[1.0, 0.0], [1.0, 0.0]])
    txt = np.array([[1.0, 1.0], [-1.0, 0.0]])
    assert clip_score(img, txt) == pytest.approx([100 / math.sqrt(2), 0.0])


def test_arc_margin_head_adds_the_angle_to_the_target_only():
    head = ArcMarginHead(2, 2, scale=10.0, margin=0.3)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    theta = 0.5
    emb = torch.tensor([[math.cos(theta), math.sin(theta)]])
    logits = head(emb, torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(10 * math.cos(theta + 0.3), abs=1e-5)
    assert logits[0, 1].item() == pytest.approx(10 * math.cos(math.pi / 2 - theta), abs=1e-5)
