"""The evaluator's metrics as pure functions of arrays (no files, no models).

Each returns ``None`` (reported as n/a) when there is nothing to measure, never a made-up number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

LONG_TERM_GAP = 20
"""Appearances at least this many shots apart count as long-term pairs ("20+ shots apart")."""
COPY_THRESHOLD = 0.01
"""Mean absolute difference (pixels in [0, 1], at 32x32) below which two keyframes are copies."""
COPY_SIZE = 32


@dataclass(frozen=True)
class FaceObservation:
    """One face crop's embedding in the movie, and whom the script says it is."""

    shot_index: int
    character_id: str
    embedding: np.ndarray  # [D], unit norm


def _mean_or_none(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def identity_consistency(
    faces: Sequence[FaceObservation], long_term_gap: int = LONG_TERM_GAP
) -> dict[str, float | int | None]:
    """Cosine similarity of the same character's faces across appearances.

    short_term: consecutive appearances of a character (its n-th and (n+1)-th shot, whatever the gap).
    long_term: every pair of its appearances at least ``long_term_gap`` shots apart.
    margin: mean same-character cosine minus mean different-character cosine over all pairs of faces
    in different shots: 0 when faces carry no identity (noise, one face pasted everywhere), so it
    tells apart "consistent" from "all the same".
    """
    by_character: dict[str, list[FaceObservation]] = {}
    for face in faces:
        by_character.setdefault(face.character_id, []).append(face)
    short, long = [], []
    for observations in by_character.values():
        observations = sorted(observations, key=lambda f: f.shot_index)
        for a, b in zip(observations, observations[1:], strict=False):
            if a.shot_index != b.shot_index:
                short.append(float(a.embedding @ b.embedding))
        for i, a in enumerate(observations):
            for b in observations[i + 1 :]:
                if b.shot_index - a.shot_index >= long_term_gap:
                    long.append(float(a.embedding @ b.embedding))
    margin = None
    if len(faces) >= 2:
        emb = np.stack([f.embedding for f in faces])  # [F, D]
        sims = emb @ emb.T
        ids = np.array([f.character_id for f in faces])
        shots = np.array([f.shot_index for f in faces])
        upper = np.triu(np.ones_like(sims, dtype=bool), k=1) & (shots[:, None] != shots[None, :])
        same = upper & (ids[:, None] == ids[None, :])
        diff = upper & (ids[:, None] != ids[None, :])
        if same.any() and diff.any():
            margin = float(sims[same].mean() - sims[diff].mean())
    return {
        "short_term": _mean_or_none(short),
        "long_term": _mean_or_none(long),
        "margin": margin,
        "short_term_pairs": len(short),
        "long_term_pairs": len(long),
    }


@dataclass(frozen=True)
class VariantReading:
    """The variant of a hidden attribute the analyser reads in one shot, and whose it is.

    The owner is a scene id (palette) or a character id (trousers): the toy world keeps each owner's
    variant constant over an episode, so a consistent movie reads the same variant wherever the owner is.
    """

    shot_index: int
    owner: str
    value: int


def variant_agreement(
    readings: Sequence[VariantReading], long_term_gap: int = LONG_TERM_GAP
) -> dict[str, float | int | None]:
    """Continuity of a hidden attribute: how often two readings of one owner show the same variant.

    short_term: each reading against the owner's next reading (its next shot in that scene, the
    character's next appearance that shows the attribute, whatever the gap).
    long_term: every pair of the owner's readings at least ``long_term_gap`` shots apart.
    Agreement is the fraction of such pairs whose variants are equal (1: continuous; with variants
    drawn independently per shot, about 1 / #variants). Readings in the same shot are not paired.
    """
    by_owner: dict[str, list[VariantReading]] = {}
    for reading in readings:
        by_owner.setdefault(reading.owner, []).append(reading)
    short, long = [], []
    for owned in by_owner.values():
        owned = sorted(owned, key=lambda r: r.shot_index)
        for a, b in zip(owned, owned[1:], strict=False):
            if a.shot_index != b.shot_index:
                short.append(a.value == b.value)
        for i, a in enumerate(owned):
            for b in owned[i + 1 :]:
                if b.shot_index - a.shot_index >= long_term_gap:
                    long.append(a.value == b.value)
    return {
        "short_term": _mean_or_none(short),
        "long_term": _mean_or_none(long),
        "short_term_pairs": len(short),
        "long_term_pairs": len(long),
    }


def chance_agreement(values: Sequence[int]) -> float | None:
    """The agreement two readings would have by chance: the probability that two independent draws from the
    readings' own variant shares are equal, the sum of the squared shares (1/#variants when the shares are even, up
    to 1 when one variant dominates). None without readings.

    Raw agreement rewards a model that draws one variant most of the time whatever the history; the chance-corrected
    agreement (:func:`chance_corrected`) does not.
    """
    if not len(values):
        return None
    _, counts = np.unique(np.asarray(values), return_counts=True)
    shares = counts / counts.sum()
    return float((shares**2).sum())


def chance_corrected(agreement: float | None, chance: float | None) -> float | None:
    """Cohen's kappa of an agreement against its chance level: (agreement - chance) / (1 - chance); 1 is perfect
    continuity, 0 no more than chance. None where either is missing or every reading is one variant (chance 1)."""
    if agreement is None or chance is None or chance >= 1.0:
        return None
    return (agreement - chance) / (1.0 - chance)


@dataclass(frozen=True)
class MotionReading:
    """What the motion reader read in one shot's clip for one cast member (or for the camera), and what the script
    asks for. ``read`` is None where the reader saw nobody at the member's position."""

    shot_index: int
    expected: str
    """The script's action (a cast member) or camera (the shot)."""
    read: str | None


def motion_agreement(readings: Sequence[MotionReading], known: Sequence[str]) -> dict[str, object]:
    """The share of readings whose read action (or camera) is the expected one.

    Readings whose expected value is not in ``known`` (the reader's vocabulary: a free-text action such as "reads a
    book") are skipped, not counted as misses. Returns ``agreement`` (None: nothing to measure), ``pairs`` (readings
    counted), ``skipped`` and ``by_expected`` (expected value -> its agreement, for the values that occur).
    """
    counted = [r for r in readings if r.expected in known]
    by_expected: dict[str, list[bool]] = {}
    for r in counted:
        by_expected.setdefault(r.expected, []).append(r.read == r.expected)
    return {
        "agreement": _mean_or_none([r.read == r.expected for r in counted]),
        "pairs": len(counted),
        "skipped": len(readings) - len(counted),
        "by_expected": {value: float(np.mean(hits)) for value, hits in sorted(by_expected.items())},
    }


def identity_accuracy(faces: Sequence[FaceObservation], references: dict[str, np.ndarray]) -> float | None:
    """Fraction of faces whose nearest reference embedding (cosine) belongs to the right character.

    ``references`` maps character id -> unit embedding (the mean of its script face photos); faces
    of characters without a reference are skipped.
    """
    known = [f for f in faces if f.character_id in references]
    if not known or not references:
        return None
    ref_ids = list(references)
    ref = np.stack([references[i] for i in ref_ids])  # [R, D]
    emb = np.stack([f.embedding for f in known])  # [F, D]
    nearest = (emb @ ref.T).argmax(1)
    return float(np.mean([ref_ids[n] == f.character_id for n, f in zip(nearest, known, strict=True)]))


class PrecomputedFeatures(nn.Module):
    """A torchmetrics feature extractor that looks features up instead of computing them.

    torchmetrics' ``FrechetInceptionDistance`` accepts any ``nn.Module`` as ``feature``; the
    evaluator already has the analyser's (or CLIP's) features, so "images" passed to ``update`` are
    the feature rows themselves.
    """

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float | None:
    """Frechet distance between Gaussians fitted to two feature sets [N, D] (Heusel et al. 2017).

    Computed by torchmetrics' FrechetInceptionDistance with the analyser's features in place of
    Inception's ("toy-FID"). Needs at least two rows on each side.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(features_a) < 2 or len(features_b) < 2:
        return None
    dim = features_a.shape[1]
    metric = FrechetInceptionDistance(feature=PrecomputedFeatures(dim), reset_real_features=True)
    metric.update(torch.as_tensor(features_b, dtype=torch.float64), real=True)
    metric.update(torch.as_tensor(features_a, dtype=torch.float64), real=False)
    return max(0.0, float(metric.compute()))


def mean_pairwise_distance(features: np.ndarray) -> float | None:
    """Mean Euclidean distance between all pairs of rows of [N, D] (diversity of the keyframes)."""
    if len(features) < 2:
        return None
    f = torch.as_tensor(features, dtype=torch.float64)
    dist = torch.cdist(f, f)
    n = len(f)
    return float(dist.sum() / (n * (n - 1)))


def copy_fraction(frames: Sequence[np.ndarray], threshold: float = COPY_THRESHOLD) -> float | None:
    """Fraction of pairs of keyframes (of different shots) that are near-identical.

    Frames are compared at 32x32 (area-resized, so pixel noise and size do not matter) by mean
    absolute difference in [0, 1]; a model that pastes one frame everywhere scores 1.
    """
    if len(frames) < 2:
        return None
    small = torch.stack([
        torch.nn.functional.interpolate(
            torch.from_numpy(np.array(f, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255.0,
            size=(COPY_SIZE, COPY_SIZE), mode="area",
        )[0]
        for f in frames
    ]).flatten(1)  # [N, 3*32*32]
    diff = torch.cdist(small, small, p=1) / small.shape[1]
    n = len(frames)
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    return float((diff[upper] < threshold).float().mean())


def clip_score(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """Per-pair CLIP score, 100 * max(cos(image, text), 0) (Hessel et al. 2021, as torchmetrics)."""
    a = image_embeddings / np.linalg.norm(image_embeddings, axis=1, keepdims=True).clip(1e-12)
    b = text_embeddings / np.linalg.norm(text_embeddings, axis=1, keepdims=True).clip(1e-12)
    return 100.0 * np.maximum((a * b).sum(1), 0.0)
