"""`mdream cache info` / `prune`: counting a cache and removing only its debris."""

from __future__ import annotations

import json
import os
import time

from typer.testing import CliRunner

from mdream.cache import ArtifactStore, artifact_key
from mdream.cache.admin import cache_usage, prune_cache
from mdream.cache.store import QUARANTINE_DIR
from mdream.cli.main import app

runner = CliRunner()


def _store_with_debris(root):
    """Three render artifacts, one of them corrupted and then quarantined by a read, one dead writer's temp dir."""
    store = ArtifactStore(root)
    keys = [artifact_key("render", "1", "toy", {"shot": i}, 0, []) for i in range(3)]
    for key in keys:
        with store.claim("render", key) as writer:
            writer.save_bytes("data.bin", b"x" * 1000)
    (store.artifact_dir("render", keys[0]) / "data.bin").write_bytes(b"y" * 1000)  # same size, other bytes
    assert store.open("render", keys[0]) is None  # verified, found corrupt, moved to quarantine
    debris = store.artifact_dir("render", keys[1]).parent / f".tmp-{keys[1]}-999999-abcd1234"
    debris.mkdir()
    (debris / "partial.bin").write_bytes(b"z" * 10)
    return store, keys, debris


def test_info_counts_and_prune_removes_only_debris(tmp_path):
    store, keys, debris = _store_with_debris(tmp_path / "cache")
    usage = cache_usage(store.root)
    assert usage.stages["render"].artifacts == 2 and usage.stages["render"].bytes > 2000
    assert len(usage.quarantined) == 1 and usage.quarantined[0].stage == "render" and usage.leftovers == 1
    assert usage.lock_files >= 3

    # a dry run removes nothing; a young quarantine entry survives --keep-days (the leftovers go)
    dry = prune_cache(store.root, dry_run=True)
    assert len(dry.removed_quarantined) == 1 and dry.removed_leftovers == 1 and debris.exists()
    kept = prune_cache(store.root, keep_days=1)
    assert kept.removed_quarantined == [] and kept.removed_leftovers == 1 and not debris.exists()
    assert len(cache_usage(store.root).quarantined) == 1

    report = prune_cache(store.root)
    assert len(report.removed_quarantined) == 1 and report.removed_leftovers == 0 and report.freed_bytes >= 1000
    assert not debris.exists() and not any((store.root / QUARANTINE_DIR / "render").iterdir())
    # the published artifacts are untouched and still verify
    assert all(store.open("render", key) is not None for key in keys[1:])
    assert cache_usage(store.root).stages["render"].artifacts == 2


def test_prune_keeps_recent_quarantine_entries_by_age(tmp_path):
    store, _, _ = _store_with_debris(tmp_path / "cache")
    entry = cache_usage(store.root).quarantined[0].path
    old = time.time() - 3 * 86400
    os.utime(entry, (old, old))
    assert [q.path for q in prune_cache(store.root, keep_days=2).removed_quarantined] == [entry]


def test_cache_commands(tmp_path):
    store, _, _ = _store_with_debris(tmp_path / "cache")
    info = runner.invoke(app, ["cache", "info", str(store.root), "--json"])
    assert info.exit_code == 0 and json.loads(info.output)["stages"]["render"]["artifacts"] == 2
    shown = runner.invoke(app, ["cache", "info", str(store.root)])
    assert shown.exit_code == 0 and "quarantined" in shown.output and "mdream cache prune" in shown.output
    pruned = runner.invoke(app, ["cache", "prune", str(store.root)])
    assert pruned.exit_code == 0 and "removed 1 quarantined artifact(s)" in pruned.output
    missing = runner.invoke(app, ["cache", "info", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no such script or cache folder" in missing.output and "Traceback" not in missing.output
    bad = runner.invoke(app, ["cache", "prune", str(store.root), "--keep-days", "-1"])
    assert bad.exit_code == 2 and "--keep-days" in bad.output
