"""File hashes remembered between runs, so multi-gigabyte weights are read once, not once per run.

A JSON file maps each hashed file's absolute path to its sha256 and the ``(size, mtime_ns, inode)``
the file had when it was hashed; a hit needs all three to match, so a rewritten, replaced or touched
file is hashed again. Only files of at least :data:`MIN_REMEMBERED_SIZE` are remembered. The memo lives in ``$MDREAM_HOME/file-hashes.json`` (default
``$XDG_CACHE_HOME/mdream`` or ``~/.cache/mdream``).

Several processes may share it: an update takes a :class:`filelock.FileLock`, rereads the file,
merges its entry and replaces the file atomically (temp file + ``os.replace``), so readers never see
a half-written memo and no update is lost. A memo that cannot be read or parsed is ignored and
rebuilt; one that cannot be written (read-only home) only costs rehashing. It is a memo, never a
source of truth: deleting it is always safe.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path

import filelock

log = logging.getLogger(__name__)

MEMO_NAME = "file-hashes.json"
MEMO_VERSION = 1
#: Entries kept at most; the least recently hashed are dropped first.
MAX_ENTRIES = 50_000
#: Smaller files are cheaper to hash again than to remember (face photos, configs): not memoised.
MIN_REMEMBERED_SIZE = 1 << 20


def mdream_home() -> Path:
    """mdream's per-user folder: ``$MDREAM_HOME``, else ``$XDG_CACHE_HOME/mdream``, else ``~/.cache/mdream``."""
    if os.environ.get("MDREAM_HOME"):
        return Path(os.environ["MDREAM_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mdream"


def _signature(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino]


class HashMemo:
    """The persistent memo at ``path`` (read once per process, merged on every write)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._entries: dict[str, dict] | None = None

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.debug("ignoring unreadable hash memo %s: %s", self.path, exc)
            return {}
        if not isinstance(data, dict) or data.get("version") != MEMO_VERSION or not isinstance(data.get("files"), dict):
            return {}
        return {k: v for k, v in data["files"].items() if isinstance(v, dict)}

    @property
    def entries(self) -> dict[str, dict]:
        if self._entries is None:
            self._entries = self._read()
        return self._entries

    def get(self, path: Path, st: os.stat_result) -> str | None:
        """The remembered sha256 of ``path`` if its size, mtime and inode still match ``st``."""
        if st.st_size < MIN_REMEMBERED_SIZE:
            return None
        entry = self.entries.get(os.path.abspath(path))
        if entry and entry.get("stat") == _signature(st) and isinstance(entry.get("sha256"), str):
            return entry["sha256"]
        return None

    def put(self, path: Path, st: os.stat_result, digest: str) -> None:
        """Remember ``digest`` for ``path`` as it was at ``st`` (best effort: errors only cost a rehash)."""
        if st.st_size < MIN_REMEMBERED_SIZE:
            return
        key = os.path.abspath(path)
        entry = {"stat": _signature(st), "sha256": digest}
        self.entries[key] = entry
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with filelock.FileLock(str(self.path) + ".lock", timeout=10):
                merged = self._read()  # other processes' entries since we last read
                merged.pop(key, None)
                merged[key] = entry  # last: dicts keep insertion order, so the oldest come first
                if len(merged) > MAX_ENTRIES:
                    merged = dict(list(merged.items())[-MAX_ENTRIES:])
                fd, tmp = tempfile.mkstemp(prefix=".file-hashes-", dir=self.path.parent)
                try:
                    with os.fdopen(fd, "w", encoding="utf-8") as f:
                        json.dump({"version": MEMO_VERSION, "files": merged}, f)
                    os.replace(tmp, self.path)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
            self._entries = merged
        except (OSError, filelock.Timeout) as exc:
            log.debug("could not update hash memo %s: %s", self.path, exc)


_MEMOS: dict[Path, HashMemo] = {}


def persistent_memo() -> HashMemo:
    """The memo for the current ``$MDREAM_HOME`` (one object per location and process)."""
    path = mdream_home() / MEMO_NAME
    if path not in _MEMOS:
        _MEMOS[path] = HashMemo(path)
    return _MEMOS[path]


def forget_loaded_memos() -> None:
    """Drop this process's copies of the memos (the next lookup rereads the file, as a new process would)."""
    _MEMOS.clear()
