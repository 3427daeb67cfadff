"""COCO run-length encoding, as used by the PASCAL-in-Detail JSON of PASCAL Context (decoding only)."""

from __future__ import annotations

import numpy as np


def rle_string_to_counts(s: str | bytes) -> list[int]:
    """Decode COCO's compressed RLE string (6-bit chars, delta-coded from count i-2)."""
    data = s.encode() if isinstance(s, str) else s
    counts: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)  # sign-extend
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts



def decode_rle(rle: dict | list) -> np.ndarray:
    """COCO RLE dict {'size': [h, w], 'counts': str|list} -> bool mask (h, w).

    Runs alternate 0/1 starting with 0 and traverse the mask column-major.  A list of
    RLEs is merged by union.
    """
    if isinstance(rle, list):
        masks = [decode_rle(r) for r in rle]
        return np.logical_or.reduce(masks) if masks else np.zeros((0, 0), dtype=bool)
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = rle_string_to_counts(counts)
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {counts.sum()}, expected {h * w}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((w, h)).T
