"""Crash-safe, content-addressed artifact cache shared by every stage (see ``store.py`` for guarantees)."""

from __future__ import annotations

from mdream.cache.keys import artifact_key, canonical_json
from mdream.cache.store import (
    Artifact,
    ArtifactStatus,
    ArtifactStore,
    ArtifactWriter,
    StatusReport,
    atomic_write,
    atomic_write_bytes,
)

__all__ = [
    "Artifact",
    "ArtifactStatus",
    "ArtifactStore",
    "ArtifactWriter",
    "StatusReport",
    "artifact_key",
    "atomic_write",
    "atomic_write_bytes",
    "canonical_json",
]
