"""Image and label decoding with errors that name the offending file.

Images: PIL + ``ImageOps.exif_transpose`` so that the result matches OpenCV
``IMREAD_COLOR`` (EXIF orientation applied, grey/alpha/CMYK/16-bit -> 8-bit RGB).
Labels: PIL as *indices* (palette PNGs keep their indices; never ``convert('RGB')``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


class DataFileError(ValueError):
    """A dataset file is missing, corrupt or has an unexpected format; message names it."""


class MissingFileError(DataFileError, FileNotFoundError):
    """A dataset file does not exist (also a ``FileNotFoundError``)."""


def _open(path: str | os.PathLike, kind: str) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{kind} file not found: {path}")
    try:
        img = Image.open(path)
        img.load()  # force full decoding so truncated files fail here, not later
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError...
        raise DataFileError(f"cannot decode {kind} file {path}: {type(exc).__name__}: {exc}") from exc
    return img


def _to_rgb_uint8(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 HxWx3 RGB (alpha dropped like OpenCV IMREAD_COLOR)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit data: keep the top byte (OpenCV's 16->8 bit rule), so 65535 -> 255.
        arr = np.asarray(img).astype(np.int64)
        gray = (np.clip(arr, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        # Float images are taken to be in [0, 1].
        arr = np.asarray(img, dtype=np.float64)
        gray = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to uint8 RGB, shape (H, W, 3), values 0..255.

    The EXIF orientation tag is applied (as OpenCV ``IMREAD_COLOR`` does), so H, W are
    the displayed size.  Raises ``MissingFileError`` / ``DataFileError`` naming ``path``.
    """
    img = _open(path, "image")
    try:
        img = ImageOps.exif_transpose(img)
        arr = _to_rgb_uint8(img)
    except Exception as exc:
        raise DataFileError(f"cannot convert image file {path} to RGB: {type(exc).__name__}: {exc}") from exc
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataFileError(f"image file {path} decoded to unexpected shape {arr.shape}")
    return arr


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Decode a label map to uint8 indices, shape (H, W), values 0..255.

    Palette ('P') PNGs give their palette indices.  Multi-channel labels are rejected
    (they are colour renderings, not index maps); 16/32-bit maps must fit in uint8.
    """
    img = _open(path, "label")
    if img.mode in ("P", "L"):
        return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "1"):
        arr = np.asarray(img)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataFileError(f"label file {path} has values outside 0..255 (mode {img.mode})")
        return arr.astype(np.uint8)
    raise DataFileError(
        f"label file {path} has mode {img.mode!r}; expected a single-channel index map "
        "('P' or 'L'). Colour-rendered labels cannot be used."
    )
