"""Opening user-named files safely: regular files only, and bounded image sizes.

A path in a script or on the command line may name a named pipe (reading it blocks forever), a
device (``/dev/zero`` never ends), a folder, a symlink loop, or an image whose small file decodes
to gigabytes of pixels. Every reader of such a path goes through :func:`open_regular_file` (files)
or :func:`image_size_problem` (images) first.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

MAX_IMAGE_PIXELS = 4096 * 4096
"""Largest image (width x height) mdream reads: the largest frame size a script may ask for.
A 16-megapixel RGB image takes 48 MiB decoded; the check reads only the header."""


def _kind(mode: int) -> str | None:
    """What a non-regular file is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


class NotARegularFile(OSError):
    """The path cannot be opened as a regular file; ``reason`` says why in words."""

    def __init__(self, reason: str, path: str | os.PathLike[str]):
        super().__init__(reason)
        self.reason = reason
        self.path = path


def open_regular_file(path: str | os.PathLike[str]) -> BinaryIO:
    """Open a regular file for reading (following symlinks), never blocking.

    Raises :class:`NotARegularFile` (an OSError) whose ``reason`` is one of: "not found", "a symlink
    loop", "a folder", "a named pipe", "a device", "a socket", "permission denied", ...
    The file is opened with O_NONBLOCK and checked with fstat, so a named pipe swapped in after a
    check cannot block the reader either.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except ValueError:  # an embedded NUL character
        raise NotARegularFile("a name with a NUL character", path) from None
    except OSError as error:
        reason = {
            errno.ENOENT: "not found",
            errno.ENOTDIR: "not found",
            errno.ELOOP: "a symlink loop",
            errno.EACCES: "permission denied",
            errno.EPERM: "permission denied",
            errno.ENAMETOOLONG: "a name that is too long",
            errno.EISDIR: "a folder",
            errno.ENXIO: "a socket",
        }.get(error.errno or 0, error.strerror or str(error))
        raise NotARegularFile(reason, path) from None
    try:
        kind = _kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise NotARegularFile(kind, path)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def regular_file_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is not a readable regular file (see :func:`open_regular_file`), or None."""
    try:
        open_regular_file(path).close()
    except NotARegularFile as error:
        return error.reason
    return None


def image_size_problem(image: object) -> str | None:
    """Why an opened (not yet decoded) PIL image is too large to decode, or None."""
    width, height = image.size  # type: ignore[attr-defined]  # read from the header, no pixels decoded
    if width * height > MAX_IMAGE_PIXELS:
        return (
            f"{width}x{height} pixels, more than the {MAX_IMAGE_PIXELS:,} pixels (4096x4096) "
            "mdream reads"
        )
    if width < 1 or height < 1:
        return f"{width}x{height} pixels, an empty image"
    return None


def resolve_safely(path: Path) -> Path | None:
    """``path.resolve()``, or None when that fails (a symlink loop, a NUL character, ...)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):
        return None
