"""Crash-safe, content-addressed artifact cache shared by every stage (see ``store.py`` for guarantees)."""

from __future__ import annotations

from mdream.cache.keys import artifact_key, canonical_json
from mdream.cache.store import (
    Artifact,
    ArtifactStatus,
    ArtifactStore,
    ArtifactWriter,
    StatusReport,
    apply_default_mode,
    atomic_path,
    atomic_write,
    atomic_write_bytes,
    remove_stale_temp_files,
)

__all__ = [
    "Artifact",
    "ArtifactStatus",
    "ArtifactStore",
    "ArtifactWriter",
    "StatusReport",
    "apply_default_mode",
    "artifact_key",
    "atomic_path",
    "atomic_write",
    "atomic_write_bytes",
    "canonical_json",
    "remove_stale_temp_files",
]
