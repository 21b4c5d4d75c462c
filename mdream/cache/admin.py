"""What a cache holds, and pruning what it no longer needs (``mdream cache info`` / ``mdream cache prune``).

Only debris is ever pruned:
- quarantined artifacts: corrupt copies moved aside for inspection, never read again;
- temp folders of writers that died (``ArtifactStore.clean_leftovers``, under each artifact's lock).

Published artifacts stay (delete a stage's folder by hand, or use ``--force``/``--from-stage``, to redo
work). Lock files stay too: they are empty, and unlinking one that another process holds or waits on
would let two processes produce the same artifact at once.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from mdream.cache.store import LOCKS_DIR, QUARANTINE_DIR, ArtifactStore
from mdream.errors import InputError


def _size(path: Path) -> int:
    """Bytes under ``path`` (a file or a folder); unreadable entries count as 0."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            pass
    return total


@dataclass
class StageUsage:
    artifacts: int = 0
    bytes: int = 0


@dataclass
class QuarantinedArtifact:
    stage: str
    path: Path
    bytes: int
    age_s: float


@dataclass
class CacheUsage:
    """Per stage: published artifacts and bytes; plus quarantined artifacts, leftover temp folders, lock files."""

    root: Path
    stages: dict[str, StageUsage] = field(default_factory=dict)
    quarantined: list[QuarantinedArtifact] = field(default_factory=list)
    leftovers: int = 0
    lock_files: int = 0

    def to_dict(self) -> dict:
        return {
            "root": str(self.root),
            "stages": {name: {"artifacts": s.artifacts, "bytes": s.bytes} for name, s in self.stages.items()},
            "quarantined": [{"stage": q.stage, "path": str(q.path), "bytes": q.bytes, "age_s": round(q.age_s)}
                            for q in self.quarantined],
            "leftovers": self.leftovers,
            "lock_files": self.lock_files,
        }


def _quarantined(root: Path) -> list[QuarantinedArtifact]:
    now = time.time()
    found = []
    for stage_dir in sorted((root / QUARANTINE_DIR).glob("*")):
        for entry in sorted(stage_dir.iterdir()) if stage_dir.is_dir() else []:
            if entry.is_dir():  # its reason record, ENTRY.json, goes with it
                found.append(QuarantinedArtifact(stage_dir.name, entry, _size(entry), now - entry.stat().st_mtime))
    return found


def cache_usage(root: str | Path) -> CacheUsage:
    """Count what the cache at ``root`` holds (reads no artifact contents)."""
    root = Path(root)
    store = ArtifactStore(root)
    usage = CacheUsage(root)
    for stage, key in store.iter_artifacts():
        entry = usage.stages.setdefault(stage, StageUsage())
        entry.artifacts += 1
        entry.bytes += _size(root / stage / key[:2] / key)
    usage.quarantined = _quarantined(root)
    usage.leftovers = sum(1 for _ in store.iter_leftovers())
    usage.lock_files = sum(1 for _ in (root / LOCKS_DIR).rglob("*.lock"))
    return usage


@dataclass
class PruneReport:
    removed_quarantined: list[QuarantinedArtifact] = field(default_factory=list)
    removed_leftovers: int = 0
    freed_bytes: int = 0
    dry_run: bool = False

    def to_dict(self) -> dict:
        return {"removed_quarantined": [str(q.path) for q in self.removed_quarantined],
                "removed_leftovers": self.removed_leftovers, "freed_bytes": self.freed_bytes, "dry_run": self.dry_run}


def prune_cache(root: str | Path, keep_days: float = 0.0, dry_run: bool = False) -> PruneReport:
    """Remove quarantined artifacts older than ``keep_days`` and dead writers' temp folders.

    ``dry_run`` only reports what would go. Published artifacts and lock files are never touched.
    """
    if not keep_days >= 0:
        raise InputError(f"--keep-days must be >= 0, got {keep_days}.")
    root = Path(root)
    report = PruneReport(dry_run=dry_run)
    for q in _quarantined(root):
        if q.age_s < keep_days * 86400:
            continue
        report.removed_quarantined.append(q)
        report.freed_bytes += q.bytes
        if not dry_run:
            shutil.rmtree(q.path, ignore_errors=True)
            q.path.with_name(q.path.name + ".json").unlink(missing_ok=True)
    if dry_run:
        report.removed_leftovers = cache_usage(root).leftovers
    else:
        report.removed_leftovers = ArtifactStore(root).clean_leftovers()
    return report
