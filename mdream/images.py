"""Reading images the same way everywhere: RGB uint8, and a clear InputError for a bad file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mdream.errors import InputError


def read_rgb(path: str | Path, what: str = "image") -> np.ndarray:
    """An image file as uint8 ``[H, W, 3]`` RGB (a writable copy)."""
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except OSError as exc:  # UnidentifiedImageError is an OSError
        raise InputError(f"Cannot read {what} {path}: {exc}", hint="Is it a PNG/JPEG image?") from None
