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


def decoder_reason(exc: BaseException) -> str:
    """The decoder's reason for a failure, ``"<exception type>: <message>"`` on one line.

    For a :class:`DataFileError` raised while decoding, the reason is that of the decoder's own exception
    (its ``__cause__``), without the file name that the wrapping message adds.
    """
    cause = exc.__cause__ if isinstance(exc, DataFileError) and exc.__cause__ is not None else exc
    return f"{type(cause).__name__}: {' '.join(str(cause).split())}"


def _decode_error(kind: str, path: Path, exc: BaseException) -> DataFileError:
    """The error for a file PIL cannot decode: names the file and keeps the decoder's reason."""
    return DataFileError(f"cannot decode {kind} file {path}: {decoder_reason(exc)}")


def _open(path: str | os.PathLike, kind: str) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{kind} file not found: {path}")
    try:
        img = Image.open(path)
        img.load()  # force full decoding so truncated files fail here, not later
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError...
        raise _decode_error(kind, path, exc) from exc
    return img


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image file as :func:`read_image` returns it (EXIF orientation applied), after checking
    that the whole file decodes.

    Reading the header alone would pass a truncated JPEG that :func:`read_image` then fails on during the
    evaluation, so the pixel data is decoded too; JPEGs at 1/8 scale (every byte is still decoded, at a
    fraction of the cost). Raises ``MissingFileError`` / ``DataFileError`` (with the decoder's reason).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            w, h = img.size
            transposed = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # rotated by 90 degrees
            img.draft(None, (1, 1))  # a no-op except for JPEG
            img.load()
    except Exception as exc:  # as in _open
        raise _decode_error("image", path, exc) from exc
    return (w, h) if transposed else (h, w)


def array_to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any HxW / HxWx1 / HxWx3 / HxWx4 array -> uint8 HxWx3 RGB (alpha dropped like OpenCV IMREAD_COLOR).

    uint8 is kept; other integers are 16-bit data whose top byte is kept (OpenCV's 16->8 bit rule, so
    65535 -> 255); floats must lie in [0, 1] (``ValueError`` otherwise,
    and for NaN / inf). Raises ``ValueError`` for other shapes or dtypes.
    An array is used as given: a 4-channel array is RGBA (a CMYK array is misread), an HxW array is grey
    (palette indices are not looked up) and no EXIF rotation is possible; ``read_image`` handles files.
    """
    if isinstance(image, (str, os.PathLike)):  # np.asarray would make a 0-d string array: say what to do
        raise TypeError(f"expected a decoded image array, got the path {str(image)!r}; "
                        "decode files with datamodules.io.read_image(path)")
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {image.shape}")
    image = image[:, :, :3]
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if np.issubdtype(image.dtype, np.integer):
        return np.ascontiguousarray((np.clip(image.astype(np.int64), 0, 65535) >> 8).astype(np.uint8))
    if np.issubdtype(image.dtype, np.floating):
        # Clipping a 0..255 float image to [0, 1] would silently turn it white: refuse instead.
        if not np.isfinite(image).all():
            raise ValueError("float image holds NaN or infinite values")
        low, high = float(image.min()), float(image.max())
        if low < 0.0 or high > 1.0:
            hint = " (a 0..255 image: divide by 255 or cast to uint8)" if high <= 255.0 and low >= 0.0 else ""
            raise ValueError(f"float images must lie in [0, 1], got values in [{low:g}, {high:g}]{hint}")
        return np.ascontiguousarray(np.rint(image * 255.0).astype(np.uint8))
    raise ValueError(f"unsupported image dtype {image.dtype}; expected uint8, 16-bit integers or float in [0, 1]")


def _to_rgb_uint8(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 HxWx3 RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return array_to_rgb_uint8(np.asarray(img))
    if img.mode != "RGB":
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


def read_label(path: str | os.PathLike, max_value: int = 255) -> np.ndarray:
    """Decode a label map to integer indices, shape (H, W).

    Palette ('P') PNGs give their palette indices.  Multi-channel labels are rejected
    (they are colour renderings, not index maps).  With ``max_value`` 255 (8-bit benchmarks) the
    result is uint8 and 16/32-bit maps must fit in 0..255; with ``max_value`` up to 65535 (16-bit
    benchmarks such as ADE-847 / PC-459, stored as uint16 TIFF or 16-bit PNG) the result is uint16.
    Values above ``max_value`` raise :class:`DataFileError` naming the file.
    """
    if not 1 <= max_value <= 65535:
        raise ValueError(f"max_value must lie in 1..65535, got {max_value}")
    img = _open(path, "label")
    out_dtype = np.uint8 if max_value <= 255 else np.uint16
    if img.mode in ("P", "L"):
        arr = np.asarray(img, dtype=np.uint8)
    elif img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "1"):
        arr = np.asarray(img)
        if arr.size and (arr.min() < 0 or arr.max() > max_value):
            what = "0..255" if max_value == 255 else f"0..{max_value}"
            hint = "" if max_value > 255 else " (a 16-bit label set needs a 16-bit preset: label_bits=16)"
            raise DataFileError(f"label file {path} has values outside {what} (mode {img.mode}); "
                                f"max {int(arr.max())}{hint}")
    else:
        raise DataFileError(
            f"label file {path} has mode {img.mode!r}; expected a single-channel index map "
            "('P', 'L', or 16-bit 'I;16' / 'I'). Colour-rendered labels cannot be used."
        )
    if arr.ndim != 2:
        raise DataFileError(f"label file {path} decoded to shape {arr.shape}; expected a 2-D index map")
    return np.ascontiguousarray(arr.astype(out_dtype))
