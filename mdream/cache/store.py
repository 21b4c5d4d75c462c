"""The crash-safe artifact store: every stage output, per shot, under a content key.

Layout (``docs/architecture.md``, "Cache layout")::

    ROOT/<stage>/<key[:2]>/<key>/           one published artifact: its files + meta.json
    ROOT/<stage>/<key[:2]>/.tmp-<key>-<pid>-<rand>/   a writer's private temp dir (never read)
    ROOT/<stage>/<key[:2]>/.old-<key>-<pid>-<rand>/   a replaced artifact, between two renames
    ROOT/.locks/<stage>/<key>.lock          the per-artifact lock file
    ROOT/.quarantine/<stage>/<key>.<time>.<rand>/     corrupt artifacts moved aside (+ a .json reason)
    ROOT/runs/<name>.json                   run manifests

``meta.json`` records ``schema_version``, ``stage``, ``key``, ``files`` (``{name: {sha256, size}}``),
``producer`` (host, pid, mdream version), ``created`` (UTC ISO 8601) and the producer's optional
``metadata`` dict.

Guarantees
----------
Atomic publish
    A writer fills a private temp dir next to the final one, fsyncs every file, computes their
    checksums, writes ``meta.json`` last, fsyncs the dir and renames it onto ``<key>/`` (one
    ``rename``, atomic on POSIX file systems). A reader therefore sees either no artifact or a complete
    one; never a half-written one. A writer that raises removes its temp dir and publishes nothing.
    Replacing an existing artifact (``force``) renames the old one to ``.old-...`` first; if the
    process dies between the two renames, the next lock holder puts the old one back.
Per-artifact locks
    Producing needs the artifact's own lock (``filelock.FileLock`` on ``.locks/<stage>/<key>.lock``),
    never a global one, so any number of processes (one per GPU, or machines on a shared file system)
    can fill one cache at once. ``claim(..., wait=False)`` returns ``None`` at once when another
    process holds the lock, so the caller moves on to other work; ``wait=True`` (or seconds) waits,
    and returns ``None`` if by then the artifact is DONE. The DONE check is repeated *under* the lock,
    so each artifact is produced once even when several processes race for it.
Crash recovery
    On Unix ``FileLock`` is an ``flock(2)`` lock on an open file descriptor: the kernel drops it when
    the holding process exits for any reason, SIGKILL included, so a killed producer's lock is free
    at once (no timeout, no stale-pid guessing); the lock file itself stays behind and is harmless.
    On NFS, ``flock`` is emulated with POSIX locks that the server drops when the client process dies
    (or when a dead client's lease expires). On file systems with no ``flock`` at all, filelock falls
    back to a soft lock (a marker file with pid and host); filelock breaks such a marker when its
    owner is a dead process on the same host (a marker from another host cannot be judged and must be
    removed by hand; ``ArtifactStore(root, soft_locks=True)`` forces this mode). A leftover lock *file* (from a dead process, or a
    SoftFileLock-style marker with stale contents) never blocks a native lock. Temp dirs left by a
    killed writer are removed the next time anyone acquires that artifact's lock (only the lock
    holder writes temp dirs for a key, so whatever is there then is debris); ``clean_leftovers``
    sweeps the whole store.
Checksums
    ``status`` (cheap: sizes; or ``checksums=True``: sha256 of every file) tells DONE, MISSING,
    CORRUPT (meta.json missing or unparseable, a file missing, or a size/sha256 mismatch) or
    IN_PROGRESS (a live process holds the lock). ``open`` always verifies every checksum; a corrupt
    artifact is reported (a ``logging`` warning naming the path and the reason), moved aside to
    ``.quarantine/`` (never silently deleted, never used) and ``None`` is returned so the caller
    recomputes it.
Permissions
    One policy for every file and folder of an artifact: 0666 / 0777 less the umask (0644 / 0755
    with the usual umask), whatever library wrote them (safetensors creates its files 0600).
Manifests
    ``write_manifest`` writes JSON to a temp file, fsyncs it and ``os.replace``-s it into place;
    ``read_manifest`` reports a corrupt manifest and treats it as absent.

Nothing already published is ever modified in place, so a crash or a bad input can cost at most the
artifact being written at that moment.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import filelock

import mdream
from mdream.cache.keys import canonical_json_value, check_stage_name
from mdream.errors import CorruptArtifactError

if TYPE_CHECKING:
    import torch
    from PIL import Image

logger = logging.getLogger(__name__)

#: Version of the meta.json layout.
META_SCHEMA_VERSION = 1
META_FILE = "meta.json"
LOCKS_DIR = ".locks"
QUARANTINE_DIR = ".quarantine"
RUNS_DIR = "runs"
TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"

#: Keys become directory names; ``artifact_key`` gives 64 hex chars, tests and tools may use others.
_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{2,128}$")
#: One component of a file name inside an artifact (``frames/0001.png`` has two).
_NAME_PART_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
_MANIFEST_NAME_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")

#: claim(wait=False) retries for this long, so that a status() probe that holds the lock for a few
#: microseconds is not mistaken for a producer.
_NO_WAIT_GRACE_S = 0.02
_POLL_S = 0.01
_HASH_CHUNK = 1 << 20


class ArtifactStatus(enum.StrEnum):
    """Where one artifact stands."""

    DONE = "done"
    MISSING = "missing"
    CORRUPT = "corrupt"
    IN_PROGRESS = "in_progress"


@dataclass(frozen=True)
class StatusReport:
    """``status`` plus the reason (for CORRUPT) and the artifact's folder."""

    status: ArtifactStatus
    path: Path
    reason: str | None = None


# ----------------------------------------------------------------------------- small file helpers


def _fsync_dir(path: Path) -> None:
    """Make a rename/create inside ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256_file(path: Path, fsync: bool = False) -> tuple[str, int]:
    """(sha256 hex, size) of a file; optionally fsync it while it is open."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        if fsync:
            os.fsync(f.fileno())
    return digest.hexdigest(), size


def _current_umask() -> int:
    """The process umask (read from /proc where possible: setting it to read it races with threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode every file (0666) or folder (0777) of the cache gets, less the umask: one policy,
    whatever library wrote the file (safetensors writes 0600, ``open`` 0666 less the umask)."""
    return (0o777 if directory else 0o666) & ~_current_umask()


def apply_default_mode(path: Path, directory: bool = False) -> None:
    """chmod ``path`` to :func:`default_mode` (files one library created with a private mode)."""
    os.chmod(path, default_mode(directory))


TEMP_FILE_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$")
"""Names of ``atomic_write``'s temp files: ``.<final name>.tmp-<pid>-<8 hex>``."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OverflowError, ValueError):  # not a pid at all
        return False
    return True


def remove_stale_temp_files(folder: Path, names: Callable[[str], bool] = lambda name: True) -> int:
    """Remove ``atomic_write`` temp files in ``folder`` left by processes that are gone.

    Only files named like ours (:data:`TEMP_FILE_RE`) whose final name passes ``names``; a temp file
    of a live process (another export to the same folder) is kept. Returns how many were removed.
    """
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        match = TEMP_FILE_RE.match(entry.name)
        if match is None or not names(match["name"]) or not entry.is_file(follow_symlinks=False):
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or not _pid_alive(pid):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed += 1
    return removed


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temp path beside ``path`` (``.<name>.tmp-<pid>-<8 hex>``, :data:`TEMP_FILE_RE`) for a writer that needs a
    file name (an encoder process, an image library); on a clean exit the file is fsynced, given the default
    mode and ``os.replace``d onto ``path``; on an error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        apply_default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temp file in ``path``'s folder, fsync it and ``os.replace`` it onto ``path``.

    Readers (and a rerun after a crash) see the old file or the whole new one, never a truncated one.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see ``atomic_write``)."""
    atomic_write(path, lambda f: f.write(data))


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"key must be a str, got {type(key).__name__}")
    if not _KEY_RE.match(key):
        raise ValueError(f"invalid artifact key {key!r}: expected 2-128 characters from [A-Za-z0-9_-]")
    return key


def _check_file_name(name: object) -> str:
    """Validate a file name inside an artifact: relative, '/'-separated, no dot-files, not meta.json."""
    if not isinstance(name, str):
        raise TypeError(f"file name must be a str, got {type(name).__name__}")
    parts = name.split("/")
    if not name or not all(_NAME_PART_RE.match(p) for p in parts) or any(p in (".", "..") for p in parts):
        raise ValueError(
            f"invalid artifact file name {name!r}: use relative '/'-separated parts of [A-Za-z0-9._-] "
            f"that do not start with '.'"
        )
    if name == META_FILE:
        raise ValueError(f"{META_FILE!r} is reserved for the store's own metadata")
    return name


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ----------------------------------------------------------------------------- verification


def _read_meta(art_dir: Path, stage: str, key: str) -> dict[str, Any]:
    """Parse and sanity-check ``meta.json``; raise CorruptArtifactError saying what is wrong."""
    meta_path = art_dir / META_FILE
    try:
        raw = meta_path.read_bytes()
    except FileNotFoundError:
        raise CorruptArtifactError(f"{META_FILE} is missing") from None
    except OSError as e:
        raise CorruptArtifactError(f"{META_FILE} cannot be read: {e}") from None
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptArtifactError(f"{META_FILE} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise CorruptArtifactError(f"{META_FILE} is not a JSON object")
    if meta.get("schema_version") != META_SCHEMA_VERSION:
        raise CorruptArtifactError(f"{META_FILE} has unknown schema_version {meta.get('schema_version')!r}")
    if meta.get("stage") != stage or meta.get("key") != key:
        raise CorruptArtifactError(
            f"{META_FILE} names stage/key {meta.get('stage')!r}/{meta.get('key')!r}, not {stage!r}/{key!r}"
        )
    files = meta.get("files")
    if not isinstance(files, dict):
        raise CorruptArtifactError(f"{META_FILE} has no 'files' table")
    for name, entry in files.items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or type(entry.get("size")) is not int
        ):
            raise CorruptArtifactError(f"{META_FILE} has a malformed entry for {name!r}")
        try:
            _check_file_name(name)
        except (TypeError, ValueError):
            raise CorruptArtifactError(f"{META_FILE} lists an invalid file name {name!r}") from None
    return meta


def _verify(art_dir: Path, stage: str, key: str, checksums: bool, hash_below: int = 0) -> dict[str, Any]:
    """Return the artifact's meta if every file has its recorded size (and sha256: of every file
    with ``checksums``, else of the files smaller than ``hash_below`` bytes); else raise."""
    meta = _read_meta(art_dir, stage, key)
    for name, entry in meta["files"].items():
        path = art_dir / name
        try:
            st = path.lstat()
        except FileNotFoundError:
            raise CorruptArtifactError(f"file {name!r} is missing") from None
        if not path.is_file() or path.is_symlink():
            raise CorruptArtifactError(f"{name!r} is not a regular file")
        if st.st_size != entry["size"]:
            raise CorruptArtifactError(
                f"file {name!r} has {st.st_size} bytes, expected {entry['size']} (truncated or overwritten)"
            )
        if checksums or st.st_size < hash_below:
            digest, _ = _sha256_file(path)
            if digest != entry["sha256"]:
                raise CorruptArtifactError(f"file {name!r} fails its sha256 checksum (content changed)")
    return meta


# ----------------------------------------------------------------------------- the published view


@dataclass(frozen=True)
class Artifact:
    """A published, verified artifact: read-only access to its files."""

    stage: str
    key: str
    dir: Path
    meta: dict[str, Any] = field(repr=False)

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        """``{name: {"sha256": ..., "size": ...}}`` for every file (meta.json excluded)."""
        return self.meta["files"]

    @property
    def metadata(self) -> dict[str, Any]:
        """The producer's own metadata dict (empty if none)."""
        return self.meta.get("metadata") or {}

    def path(self, name: str) -> Path:
        """Path of one of the artifact's files (KeyError if the artifact has no such file)."""
        if name not in self.meta["files"]:
            raise KeyError(f"artifact {self.stage}/{self.key} has no file {name!r}; it has {sorted(self.files)}")
        return self.dir / name

    def read_bytes(self, name: str) -> bytes:
        return self.path(name).read_bytes()

    def load_json(self, name: str) -> Any:
        return json.loads(self.path(name).read_text(encoding="utf-8"))

    def load_image(self, name: str) -> Image.Image:
        """The image, fully loaded (the file is closed on return)."""
        from PIL import Image

        with Image.open(self.path(name)) as im:
            im.load()
        return im

    def load_tensors(self, name: str, device: str = "cpu") -> dict[str, torch.Tensor]:
        """A safetensors file as ``{name: tensor}``."""
        from safetensors.torch import load_file

        return load_file(self.path(name), device=device)


# ----------------------------------------------------------------------------- the writer


class ArtifactWriter:
    """Builds one artifact in a private temp dir while holding its lock; publishes it on success.

    Use it as a context manager (``with store.claim(stage, key) as w: ...``): a clean exit calls
    :meth:`commit`, an exception calls :meth:`abort` and propagates. Without ``with``, call one of
    them yourself; the lock is held until then.
    """

    def __init__(self, store: ArtifactStore, stage: str, key: str, lock: filelock.BaseFileLock, tmp_dir: Path):
        self.store = store
        self.stage = stage
        self.key = key
        self.tmp_dir = tmp_dir
        #: Free-form, JSON-able metadata stored in meta.json under "metadata".
        self.metadata: dict[str, Any] = {}
        #: The published artifact, once committed.
        self.artifact: Artifact | None = None
        self._lock = lock
        self._finished = False
        self._owner_pid = os.getpid()

    # -- writing
    def path(self, name: str) -> Path:
        """Where to write file ``name`` directly (e.g. an mp4 writer); parent folders are created."""
        self._check_open()
        p = self.tmp_dir / _check_file_name(name)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def save_bytes(self, name: str, data: bytes) -> Path:
        p = self.path(name)
        p.write_bytes(data)
        return p

    def save_json(self, name: str, obj: Any) -> Path:
        p = self.path(name)
        p.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
        return p

    def save_image(self, name: str, image: Image.Image) -> Path:
        """Save a PIL image as PNG (whatever the name's extension)."""
        p = self.path(name)
        image.save(p, format="PNG")
        return p

    def save_tensors(self, name: str, tensors: Mapping[str, torch.Tensor],
                     metadata: Mapping[str, str] | None = None) -> Path:
        """Save ``{name: tensor}`` as safetensors (copied to contiguous CPU memory first)."""
        from safetensors.torch import save_file

        p = self.path(name)
        # clone(): safetensors refuses tensors that share storage (views of one buffer).
        plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
        save_file(plain, p, metadata=dict(metadata) if metadata else None)
        return p

    def add_file(self, name: str, src_path: str | os.PathLike[str]) -> Path:
        """Copy an existing file (e.g. an mp4) into the artifact."""
        p = self.path(name)
        shutil.copyfile(src_path, p)
        return p

    # -- finishing
    def commit(self) -> Artifact:
        """fsync + checksum every file, write meta.json last, publish atomically, release the lock."""
        self._check_open()
        try:
            metadata = canonical_json_value(self.metadata, "metadata")
            files: dict[str, dict[str, Any]] = {}
            dirs = [self.tmp_dir]
            for p in sorted(self.tmp_dir.rglob("*")):
                rel = p.relative_to(self.tmp_dir).as_posix()
                if p.is_symlink() or not (p.is_file() or p.is_dir()):
                    raise ValueError(f"artifact file {rel!r} is not a regular file (symlinks are not stored)")
                if p.is_dir():
                    dirs.append(p)
                    continue
                if rel == META_FILE:
                    raise ValueError(f"{META_FILE!r} is reserved for the store's own metadata")
                _check_file_name(rel)
                apply_default_mode(p)  # before hashing: a chmod is metadata, but keep the order obvious
                digest, size = _sha256_file(p, fsync=True)
                files[rel] = {"sha256": digest, "size": size}
            meta = {
                "schema_version": META_SCHEMA_VERSION,
                "stage": self.stage,
                "key": self.key,
                "files": files,
                "producer": {"host": socket.gethostname(), "pid": os.getpid(), "mdream_version": mdream.__version__},
                "created": _now_iso(),
                "metadata": metadata,
            }
            with open(self.tmp_dir / META_FILE, "w", encoding="utf-8") as f:
                f.write(json.dumps(meta, indent=2, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            apply_default_mode(self.tmp_dir / META_FILE)
            for d in dirs:
                apply_default_mode(d, directory=True)
                _fsync_dir(d)
            final = self.store.artifact_dir(self.stage, self.key)
            self.store._publish(self.stage, self.key, self.tmp_dir, final)
            self.artifact = Artifact(self.stage, self.key, final, meta)
        except BaseException:
            self.abort()
            raise
        self._finish()
        return self.artifact

    def abort(self) -> None:
        """Discard the temp dir and release the lock; nothing is published."""
        if self._finished:
            return
        try:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
        finally:
            self._finish()

    def _finish(self) -> None:
        self._finished = True
        with contextlib.suppress(Exception):
            self._lock.release()

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError(f"writer for {self.stage}/{self.key} is already committed or aborted")

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def __del__(self) -> None:  # a writer dropped without commit/abort must not keep the lock
        # ... but a forked child (e.g. a DataLoader worker) must never delete its parent's temp dir.
        if not getattr(self, "_finished", True) and getattr(self, "_owner_pid", None) == os.getpid():
            with contextlib.suppress(Exception):
                self.abort()


# ----------------------------------------------------------------------------- the store


class ArtifactStore:
    """A folder of content-addressed, checksummed artifacts that many processes can fill at once."""

    def __init__(self, root: str | os.PathLike[str], soft_locks: bool = False):
        """``soft_locks=True`` uses marker-file locks (``filelock.SoftFileLock``) instead of ``flock``,
        for file systems where ``flock`` is broken; a marker left by a dead process on this host is
        broken automatically, one left by another host must be removed by hand."""
        self.root = Path(root)
        self.soft_locks = soft_locks

    def _new_lock(self, lock_path: Path) -> filelock.BaseFileLock:
        lock_class = filelock.SoftFileLock if self.soft_locks else filelock.FileLock
        return lock_class(lock_path, thread_local=False)

    # -- paths
    def artifact_dir(self, stage: str, key: str) -> Path:
        """``root/<stage>/<key[:2]>/<key>``."""
        check_stage_name(stage)
        _check_key(key)
        return self.root / stage / key[:2] / key

    def lock_path(self, stage: str, key: str) -> Path:
        check_stage_name(stage)
        _check_key(key)
        return self.root / LOCKS_DIR / stage / f"{key}.lock"

    def manifest_path(self, name: str) -> Path:
        if not isinstance(name, str) or not _MANIFEST_NAME_RE.match(name):
            raise ValueError(f"invalid manifest name {name!r}: use [A-Za-z0-9._-], not starting with '.'")
        return self.root / RUNS_DIR / f"{name}.json"

    # -- status
    def check(self, stage: str, key: str, checksums: bool = False, hash_below: int = 0) -> StatusReport:
        """Status of one artifact with the reason when it is CORRUPT.

        ``checksums=False`` checks meta.json and file sizes only (cheap: no file is read), and
        hashes the files smaller than ``hash_below`` bytes; ``checksums=True`` hashes every file.
        """
        final = self.artifact_dir(stage, key)
        reason: str | None = None
        if final.exists():
            try:
                _verify(final, stage, key, checksums, hash_below)
                return StatusReport(ArtifactStatus.DONE, final)
            except CorruptArtifactError as e:
                reason = e.message if final.exists() else None  # None: moved aside while we looked
        if self._lock_is_held(stage, key):
            return StatusReport(ArtifactStatus.IN_PROGRESS, final, reason)
        if reason is not None:
            return StatusReport(ArtifactStatus.CORRUPT, final, reason)
        return StatusReport(ArtifactStatus.MISSING, final)

    def status(self, stage: str, key: str, checksums: bool = False, hash_below: int = 0) -> ArtifactStatus:
        """DONE, MISSING, CORRUPT or IN_PROGRESS (see :meth:`check`)."""
        return self.check(stage, key, checksums, hash_below).status

    def _lock_is_held(self, stage: str, key: str) -> bool:
        lock_path = self.lock_path(stage, key)
        if not lock_path.exists():  # a holder creates it; probing must not create files
            return False
        lock = self._new_lock(lock_path)
        try:
            lock.acquire(blocking=False)
        except filelock.Timeout:
            return True
        except OSError:  # e.g. a read-only cache: nobody can be producing into it through us
            return False
        lock.release()
        return False

    # -- reading
    def open(self, stage: str, key: str) -> Artifact | None:
        """The verified artifact, or None if it is missing or corrupt (a corrupt one is quarantined)."""
        final = self.artifact_dir(stage, key)
        if not final.exists():
            return None
        try:
            meta = _verify(final, stage, key, checksums=True)
            return Artifact(stage, key, final, meta)
        except CorruptArtifactError as e:
            reason = e.message
        # Move it aside under its lock, so that we never move a fresh copy a producer just published.
        lock = self._new_lock(self._ensure_lock_dir(stage, key))
        try:
            lock.acquire(timeout=_NO_WAIT_GRACE_S, poll_interval=_POLL_S)
        except filelock.Timeout:
            logger.warning("corrupt artifact %s (%s); not used. It is being re-produced by another process.",
                           final, reason)
            return None
        try:
            self._recover_leftovers(stage, key)
            if not final.exists():  # someone else moved it aside meanwhile
                return None
            try:
                meta = _verify(final, stage, key, checksums=True)
                return Artifact(stage, key, final, meta)  # replaced by a good copy meanwhile
            except CorruptArtifactError as e:
                reason = e.message
            self._quarantine(stage, key, final, reason)
            return None
        finally:
            lock.release()

    # -- producing
    def claim(self, stage: str, key: str, wait: bool | float = False, force: bool = False) -> ArtifactWriter | None:
        """Take the artifact's lock and return a writer, or None if there is nothing for us to do.

        ``wait=False``: if another live process holds the lock, return None at once (move on).
        ``wait=True``: wait for the lock; ``wait=<seconds>``: wait at most that long (None on timeout).
        Once the lock is ours: if the artifact is DONE (checksums verified) return None, unless
        ``force`` (then the new one replaces it on commit); a corrupt one is quarantined.
        """
        lock_path = self._ensure_lock_dir(stage, key)
        if wait is False:
            timeout = _NO_WAIT_GRACE_S
        elif wait is True:
            timeout = -1.0
        elif isinstance(wait, (int, float)) and wait >= 0:
            timeout = float(wait)
        else:
            raise ValueError(f"wait must be a bool or a number of seconds >= 0, got {wait!r}")
        lock = self._new_lock(lock_path)
        tmp_dir: Path | None = None
        try:
            lock.acquire(timeout=timeout, poll_interval=_POLL_S)
        except filelock.Timeout:
            return None
        try:
            self._recover_leftovers(stage, key)
            final = self.artifact_dir(stage, key)
            if final.exists():
                try:
                    _verify(final, stage, key, checksums=True)
                    if not force:
                        lock.release()
                        return None
                except CorruptArtifactError as e:
                    self._quarantine(stage, key, final, e.message)
            tmp_dir = final.parent / f"{TMP_PREFIX}{key}-{os.getpid()}-{secrets.token_hex(4)}"
            tmp_dir.mkdir(parents=True)
            return ArtifactWriter(self, stage, key, lock, tmp_dir)
        except BaseException:  # Ctrl-C included: no temp folder is left behind without its writer
            if tmp_dir is not None:
                shutil.rmtree(tmp_dir, ignore_errors=True)
            lock.release()
            raise

    def get_or_produce(self, stage: str, key: str, produce: Callable[[ArtifactWriter], None],
                       force: bool = False) -> Artifact:
        """The artifact, produced by ``produce(writer)`` if it is missing or corrupt (waits for others)."""
        for _attempt in range(5):
            if not force:
                art = self.open(stage, key)
                if art is not None:
                    return art
            writer = self.claim(stage, key, wait=True, force=force)
            if writer is None:  # another process made it while we waited
                continue
            with writer:
                produce(writer)
            assert writer.artifact is not None
            return writer.artifact
        raise CorruptArtifactError(
            f"artifact {stage}/{key} kept turning up corrupt or missing right after being produced",
            hint=f"check the disk holding {self.root} (free space, errors) and try again",
        )

    # -- listing and housekeeping
    def iter_artifacts(self, stage: str | None = None) -> Iterator[tuple[str, str]]:
        """``(stage, key)`` of every published artifact folder (not verified)."""
        stages = [stage] if stage is not None else sorted(
            p.name for p in self._listdir(self.root) if p.is_dir() and not p.name.startswith(".")
            and p.name != RUNS_DIR
        )
        for st in stages:
            for shard in sorted(self._listdir(self.root / st)):
                if shard.name.startswith(".") or not shard.is_dir():
                    continue
                for d in sorted(self._listdir(shard)):
                    if not d.name.startswith(".") and d.is_dir():
                        yield st, d.name

    def iter_leftovers(self) -> Iterator[tuple[str, str, Path]]:
        """(stage, key, folder) of every writer's temp dir or replaced artifact (``.tmp-``/``.old-``) in the store.

        While a writer runs its temp dir is listed too; only its lock tells live from dead.
        """
        for stage_dir in self._listdir(self.root):
            if stage_dir.name.startswith(".") or stage_dir.name == RUNS_DIR or not stage_dir.is_dir():
                continue
            for shard in self._listdir(stage_dir):
                for d in self._listdir(shard):
                    if m := re.match(r"^\.(?:tmp|old)-([A-Za-z0-9_-]+)-\d+-[0-9a-f]+$", d.name):
                        yield stage_dir.name, m.group(1), d

    def clean_leftovers(self) -> int:
        """Remove temp dirs of dead writers across the store (skipping keys being produced); returns count."""
        removed = 0
        for stage, key in sorted({(stage, key) for stage, key, _ in self.iter_leftovers()}):
            lock = self._new_lock(self._ensure_lock_dir(stage, key))
            try:
                lock.acquire(blocking=False)
            except filelock.Timeout:
                continue
            try:
                removed += self._recover_leftovers(stage, key)
            finally:
                lock.release()
        return removed

    # -- manifests
    def write_manifest(self, name: str, data: Mapping[str, Any]) -> Path:
        """Atomically write ``root/runs/<name>.json`` (temp file, fsync, os.replace)."""
        path = self.manifest_path(name)
        plain = canonical_json_value(data, "manifest")
        if not isinstance(plain, dict):
            raise TypeError(f"manifest data must be a mapping, got {type(data).__name__}")
        text = json.dumps(plain, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        atomic_write_bytes(path, text.encode("utf-8"))
        return path

    def read_manifest(self, name: str) -> dict[str, Any] | None:
        """The manifest, or None if it is absent or corrupt (a corrupt one is reported)."""
        path = self.manifest_path(name)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            logger.warning("run manifest %s cannot be read (%s); treating it as absent", path, e)
            return None
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            logger.warning("run manifest %s is corrupt (%s); treating it as absent", path, e)
            return None
        if not isinstance(data, dict):
            logger.warning("run manifest %s is not a JSON object; treating it as absent", path)
            return None
        return data

    # -- internals
    @staticmethod
    def _listdir(path: Path) -> list[Path]:
        try:
            return list(path.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []

    def _ensure_lock_dir(self, stage: str, key: str) -> Path:
        lock_path = self.lock_path(stage, key)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        return lock_path

    def _recover_leftovers(self, stage: str, key: str) -> int:
        """Clean up after writers of this key that died. The caller must hold the key's lock."""
        final = self.artifact_dir(stage, key)
        shard = final.parent
        count = 0
        tmp_prefix, old_prefix = f"{TMP_PREFIX}{key}-", f"{OLD_PREFIX}{key}-"
        for d in self._listdir(shard):
            if d.name.startswith(tmp_prefix):
                logger.info("removing temp dir of an interrupted writer: %s", d)
                shutil.rmtree(d, ignore_errors=True)
                count += 1
        for d in sorted(self._listdir(shard)):
            if d.name.startswith(old_prefix):
                # A replace died between its two renames: put the old artifact back if nothing
                # replaced it; otherwise it was superseded and goes.
                if not final.exists():
                    logger.info("restoring %s after an interrupted replace", final)
                    os.rename(d, final)
                    _fsync_dir(shard)
                else:
                    shutil.rmtree(d, ignore_errors=True)
                count += 1
        return count

    def _quarantine(self, stage: str, key: str, art_dir: Path, reason: str) -> Path | None:
        """Move a corrupt artifact to ``.quarantine/`` (never delete it) and report it."""
        qdir = self.root / QUARANTINE_DIR / stage
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        target = qdir / f"{key}.{stamp}.{secrets.token_hex(3)}"
        try:
            qdir.mkdir(parents=True, exist_ok=True)
            os.rename(art_dir, target)
            _fsync_dir(art_dir.parent)
        except OSError as e:
            logger.error("corrupt artifact %s (%s) could not be moved to quarantine (%s); it is not used",
                         art_dir, reason, e)
            return None
        with contextlib.suppress(OSError):
            record = {"stage": stage, "key": key, "reason": reason, "original": str(art_dir),
                      "time": _now_iso(), "host": socket.gethostname(), "pid": os.getpid()}
            atomic_write_bytes(target.with_name(target.name + ".json"),
                                (json.dumps(record, indent=2) + "\n").encode("utf-8"))
        logger.warning("corrupt artifact %s: %s. Moved to %s; it will be recomputed.", art_dir, reason, target)
        return target

    def _publish(self, stage: str, key: str, tmp_dir: Path, final: Path) -> None:
        """Rename the finished temp dir onto ``final`` (the caller holds the lock)."""
        shard = final.parent
        old: Path | None = None
        if final.exists():
            try:
                _verify(final, stage, key, checksums=False)
            except CorruptArtifactError as e:  # damaged while we worked: keep it for inspection
                self._quarantine(stage, key, final, e.message)
            else:  # forced re-production replaces a good copy: keep it until the new one is in place
                old = shard / f"{OLD_PREFIX}{key}-{os.getpid()}-{secrets.token_hex(4)}"
                os.rename(final, old)
        try:
            os.rename(tmp_dir, final)
        except OSError as e:
            if old is not None and not final.exists():
                os.rename(old, final)
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise CorruptArtifactError(f"cannot publish {final}: the folder reappeared while publishing") from e
            raise
        _fsync_dir(shard)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

