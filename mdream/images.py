"""Reading images the same way everywhere: RGB uint8, and a clear InputError for a bad file.

Only regular files are read (a named pipe or a device never blocks the reader, see
:mod:`mdream.files`), and an image larger than :data:`mdream.files.MAX_IMAGE_PIXELS` is refused
from its header, before any pixel is decoded.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from mdream.errors import InputError
from mdream.files import MAX_IMAGE_PIXELS, NotARegularFile, image_size_problem, open_regular_file

if TYPE_CHECKING:
    import numpy as np

__all__ = ["MAX_IMAGE_PIXELS", "ImageSizeError", "open_image", "read_rgb"]


class ImageSizeError(InputError):
    """An image whose size (read from its header) mdream will not decode; ``problem`` says why."""

    def __init__(self, what: str, path: str | Path, problem: str):
        super().__init__(f"Cannot read {what} {path}: it is {problem}.", hint="scale the image down (4096x4096 at most)")
        self.problem = problem


@contextlib.contextmanager
def open_image(path: str | Path, what: str = "image") -> Iterator[Image.Image]:
    """Open an image file lazily (header only), refusing non-regular files and oversized images.

    A context manager: decode inside it (``.convert``/``.load``); the file is closed on exit.
    """
    try:
        file = open_regular_file(path)
    except NotARegularFile as error:
        raise InputError(f"Cannot read {what} {path}: it is {error.reason}.",
                         hint="name a PNG or JPEG image file") from None
    with file:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(file)
        except Image.DecompressionBombError:
            raise ImageSizeError(what, path, f"larger than {MAX_IMAGE_PIXELS:,} pixels") from None
        except Exception as exc:  # UnidentifiedImageError (an OSError) and PIL's parser errors
            raise InputError(f"Cannot read {what} {path}: {exc}", hint="Is it a PNG/JPEG image?") from None
        with image:
            problem = image_size_problem(image)
            if problem is not None:
                raise ImageSizeError(what, path, problem)
            yield image


def read_rgb(path: str | Path, what: str = "image") -> np.ndarray:
    """An image file as uint8 ``[H, W, 3]`` RGB (a writable copy)."""
    import numpy as np  # only readers of pixels pay for numpy (`mdream script-validate` checks headers)

    with open_image(path, what) as image:
        try:
            return np.array(image.convert("RGB"))
        except Exception as exc:  # a truncated or damaged file fails while decoding
            raise InputError(f"Cannot read {what} {path}: {exc}", hint="Is it a PNG/JPEG image?") from None
