"""Reading the files of a dataset: every failure names the file, what was expected and what
was found, so a corrupt frame among thousands is found by its path, not by a PIL traceback."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# What PIL raises on a damaged image: UnidentifiedImageError (an OSError) for a file that is not
# an image at all, OSError ("image file is truncated") or SyntaxError ("broken PNG file") for a
# cut one, zlib.error/ValueError/EOFError for damaged compressed data.
_IMAGE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    zlib.error,
    Image.DecompressionBombError,
)

# Modes whose pixel values are the object ids themselves. Anything else (RGB, RGBA, LA, F, ...)
# would have to be quantised to get ids, which silently invents them: refused.
LABEL_MODES = ("P", "L", "1", "I;16", "I;16B", "I;16L", "I")


class DataFileError(ValueError):
    """A dataset file that is missing, unreadable, or not what its place in the layout says."""


def read_rgb(path: Path, what: str = "frame") -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file: ``FileNotFoundError`` if it is missing,
    ``DataFileError`` if it cannot be decoded, both naming ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))  # convert() decodes the whole file
    except _IMAGE_ERRORS as error:
        raise DataFileError(
            f"cannot read {what} {path}: expected a readable image, got {type(error).__name__}: {error}"
        ) from error


def read_label_png(path: Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W) object ids of an annotation PNG (palette or grayscale: the pixel value is the id,
    255 is DAVIS's void). ``shape``, when given, is the size of the annotated frame, which the
    annotation must have."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation not found: {path}")
    try:
        with Image.open(path) as label:
            mode = label.mode
            if mode not in LABEL_MODES:
                raise DataFileError(
                    f"annotation {path} is a {mode} image: expected a palette (P) or grayscale "
                    f"(L, 16-bit) PNG whose pixel values are object ids"
                )
            ids = np.asarray(label)
    except DataFileError:
        raise
    except _IMAGE_ERRORS as error:
        raise DataFileError(
            f"cannot read annotation {path}: expected a readable PNG, got {type(error).__name__}: {error}"
        ) from error
    if ids.dtype == bool:
        ids = ids.astype(np.uint8)
    if shape is not None and ids.shape != tuple(shape):
        raise DataFileError(
            f"annotation {path} is {ids.shape[0]}x{ids.shape[1]} but its frame is {shape[0]}x{shape[1]}"
        )
    return ids
