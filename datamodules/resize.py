"""The protocol's test-time resize (mmcv ``imrescale``), with no dependency beyond NumPy and OpenCV.

Kept apart from the albumentations pipeline so that the model's ``predict`` can use the exact same
rule without importing Lightning or albumentations.
"""

from __future__ import annotations

import cv2
import numpy as np


def rescale_size(height: int, width: int, short_side: int, long_side_cap: int = 2048) -> tuple[int, int]:
    """Target (new_h, new_w) of the mmcv ``imrescale`` rule with scale (long_side_cap, short_side)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"invalid image size {height}x{width}")
    sf = min(long_side_cap / max(height, width), short_side / min(height, width))
    new_h = max(1, int(height * float(sf) + 0.5))
    new_w = max(1, int(width * float(sf) + 0.5))
    return new_h, new_w


def resize_short_side(image: np.ndarray, short_side: int, long_side_cap: int = 2048) -> np.ndarray:
    """Resize uint8 (H, W, 3) so the short side is ``short_side`` (long side <= ``long_side_cap``)."""
    h, w = image.shape[:2]
    new_h, new_w = rescale_size(h, w, short_side, long_side_cap)
    if (new_h, new_w) == (h, w):
        return image
    # cv2 takes (width, height); INTER_LINEAR on uint8 reproduces mmcv bit for bit.
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
