"""Test-time transforms: the mmcv short-side rescale rule and the label LUTs.

Resize rule (docs/method_notes.md, 'Test-time resize'): ``sf = min(long_side_cap / max(h, w), short_side /
min(h, w))``, new size ``int(x * sf + 0.5)``, OpenCV ``INTER_LINEAR`` on uint8; upscaling included.
Labels are never resized.
"""

from __future__ import annotations

import os

import numpy as np

from .resize import resize_short_side

# albumentations pings PyPI on import unless told not to; evaluation must never touch the network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402  (after the line above)

IGNORE_INDEX = 255


class ResizeShortSide(A.ImageOnlyTransform):
    """albumentations transform applying :func:`resize_short_side` to the image only."""

    def __init__(self, short_side: int, long_side_cap: int = 2048, p: float = 1.0):
        super().__init__(p=p)
        self.short_side = int(short_side)
        self.long_side_cap = int(long_side_cap)

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        return resize_short_side(img, self.short_side, self.long_side_cap)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("short_side", "long_side_cap")


def build_test_transform(short_side: int, long_side_cap: int = 2048) -> A.Compose:
    """Image-only test pipeline; masks are deliberately not passed through it."""
    return A.Compose([ResizeShortSide(short_side, long_side_cap, p=1.0)])


def label_lut(reduce_zero_label: bool, bits: int = 8) -> np.ndarray:
    """LUT over all ``2**bits`` raw values: identity, or reduce-zero-label.

    8 bits (uint8): 0 -> 255, v -> v-1, 255 -> 255 (mmseg ``LoadAnnotations``).
    16 bits (uint16): mmseg's rule on uint16 as ProxyCLIP's ``MyLoadAnnotations`` applies it:
    0 -> 255, v -> v-1, then every 254 -> 255 (so raw 255 -> 255 and raw 65535 -> 65534).
    """
    if bits == 8:
        lut = np.arange(256, dtype=np.uint8)
        if reduce_zero_label:
            lut[0] = IGNORE_INDEX
            lut[1:255] = np.arange(0, 254, dtype=np.uint8)
            lut[255] = IGNORE_INDEX
        return lut
    if bits != 16:
        raise ValueError(f"label bits must be 8 or 16, got {bits}")
    lut = np.arange(65536, dtype=np.uint16)
    if reduce_zero_label:
        lut[0] = IGNORE_INDEX
        lut[1:] = np.arange(0, 65535, dtype=np.uint16)
        lut[lut == 254] = IGNORE_INDEX
    return lut


def apply_label_transform(label: np.ndarray, reduce_zero_label: bool) -> np.ndarray:
    """Apply the load-time label transform once, on uint8 or uint16 (H, W)."""
    return label_lut(reduce_zero_label, 16 if label.dtype == np.uint16 else 8)[label]
