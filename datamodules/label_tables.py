"""Label tables of the benchmarks and the per-pixel conversions built on them.

Every conversion is a lookup on the *original* raw array, never chained through an intermediate
encoding (see docs/dataset_notes.md, 'Label encodings and conversion tables').  Used by the
preparation (``datamodules.prepare``) and by the miniature generator (``datamodules.synthetic``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np


class ConversionWarning(UserWarning):
    """Unexpected raw values were mapped to a fallback value."""


class UnexpectedRawValueError(ValueError):
    """A raw label map holds values the official data never contain; the message names the file and values."""


# =====================================================================================
# PASCAL Context 60, COCO-Stuff / COCO-Object, Cityscapes
# =====================================================================================

#: Sorted raw PASCAL-in-Detail ids of the 60 Context classes; train id = rank.
CONTEXT_RAW_IDS = np.array([
    0, 2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105,
    113, 115, 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308,
    324, 326, 347, 349, 354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458,
], dtype=np.int64)

#: Raw stuffthingmap values (COCO id - 1) that have no masks and never occur.
COCO_UNUSED_RAW = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
#: The 171 raw values that occur, in order; COCO-Stuff train id = rank.
COCO_USED_RAW = tuple(v for v in range(182) if v not in COCO_UNUSED_RAW)

#: Cityscapes labelIds evaluated as trainIds 0..18, in order.
CITYSCAPES_EVAL_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


def coco_stuff_lut() -> np.ndarray:
    """raw -> ``_labelTrainIds``: rank among used raw values; 255 and unknown -> 255."""
    lut = np.full(256, 255, dtype=np.uint8)
    lut[list(COCO_USED_RAW)] = np.arange(171, dtype=np.uint8)
    return lut


def coco_object_lut() -> np.ndarray:
    """raw -> ``_instanceTrainIds``: things 1..80, stuff and unlabeled (255) -> 0, unknown -> 255."""
    stuff = coco_stuff_lut()
    lut = np.full(256, 255, dtype=np.uint8)
    used = np.array(COCO_USED_RAW)
    lut[used] = np.where(stuff[used] <= 79, stuff[used].astype(np.int64) + 1, 0).astype(np.uint8)
    lut[255] = 0
    return lut


def coco_known_raw() -> np.ndarray:
    """Boolean (256,) mask of raw values that legitimately occur (171 used + 255)."""
    known = np.zeros(256, dtype=bool)
    known[list(COCO_USED_RAW)] = True
    known[255] = True
    return known


def convert_coco_stuffthingmap(raw: np.ndarray, source: str = "<array>") -> tuple[np.ndarray, np.ndarray]:
    """Raw stuffthingmap uint8 (H, W) -> (``_labelTrainIds``, ``_instanceTrainIds``) uint8 (H, W).

    Raises:
        UnexpectedRawValueError: ``raw`` holds values that never occur in the official maps (the 11 COCO
            ids without masks, or > 181 other than 255). Such a map is not an official stuffthingmap
            (wrong file, or already converted), and mapping the values to 255 would silently drop pixels
            from the evaluation (see docs/dataset_notes.md, 'COCO-Stuff').
    """
    raw = np.asarray(raw, dtype=np.uint8)
    present = np.bincount(raw.ravel(), minlength=256) > 0
    unknown = np.flatnonzero(present & ~coco_known_raw())
    if unknown.size:
        raise UnexpectedRawValueError(
            f"{source}: raw values {unknown.tolist()} never occur in COCO-Stuff-164k stuffthingmaps "
            "(expected 0..181 without 11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90, and 255); is this an "
            "official stuffthingmaps_trainval2017 file?"
        )
    return coco_stuff_lut()[raw], coco_object_lut()[raw]


def cityscapes_lut() -> np.ndarray:
    """labelId -> trainId: the 19 evaluated ids -> 0..18, everything else -> 255."""
    lut = np.full(256, 255, dtype=np.uint8)
    lut[list(CITYSCAPES_EVAL_LABEL_IDS)] = np.arange(19, dtype=np.uint8)
    return lut


def convert_cityscapes_label_ids(label_ids: np.ndarray) -> np.ndarray:
    """``*_gtFine_labelIds`` uint8 (H, W) -> ``*_gtFine_labelTrainIds`` uint8 (H, W)."""
    return cityscapes_lut()[np.asarray(label_ids, dtype=np.uint8)]


def convert_context_raw(mask: np.ndarray, source: str = "<array>") -> np.ndarray:
    """Raw Detail category ids (H, W) -> Context60 ids uint8 0..59 (rank in the 60-id list).

    Any raw id outside the 60 (absent from the official merged JSON) becomes background 0
    with a :class:`ConversionWarning`, as the table's "any other category" row says.
    """
    mask = np.asarray(mask, dtype=np.int64)
    pos = np.searchsorted(CONTEXT_RAW_IDS, mask)
    pos_c = np.minimum(pos, len(CONTEXT_RAW_IDS) - 1)
    member = CONTEXT_RAW_IDS[pos_c] == mask
    if not member.all():
        bad = np.unique(mask[~member]).tolist()
        warnings.warn(f"{source}: Detail category ids {bad[:10]} are not among the 60 Context classes; "
                      "mapped to background 0", ConversionWarning, stacklevel=2)
    return np.where(member, pos_c, 0).astype(np.uint8)



# =====================================================================================
# ADE-847 and PASCAL Context 459 (the CAT-Seg / MaskFormer preparation, transcribed)
# =====================================================================================

#: Value written for pixels without one of the 847 / 459 classes (uint16 maps).
UNLABELED_16BIT = 65535
#: ADE-847: raw ADE20K-full object class id of train id t (``datasets/prepare_ade20k_full.py``'s
#: ``ADE20K_SEM_SEG_FULL_CATEGORIES``, in train-id order), one per line.
ADE847_RAW_IDS_FILE = Path(__file__).resolve().parent / "classes" / "ade847_raw_ids.txt"
#: ADE-847 images and labels are shrunk so that a short side above this becomes this.
ADE847_MAX_SHORT = 512


def ade847_raw_ids() -> np.ndarray:
    ids = np.array([int(x) for x in ADE847_RAW_IDS_FILE.read_text().split()], dtype=np.int64)
    assert ids.size == 847 and np.unique(ids).size == 847
    return ids


def ade847_lut() -> np.ndarray:
    """(6656,) uint16: decoded ADE20K-full class id -> train id 0..846, every other id -> 65535."""
    lut = np.full(25 * 256 + 256, UNLABELED_16BIT, dtype=np.uint16)
    lut[ade847_raw_ids()] = np.arange(847, dtype=np.uint16)
    return lut


def decode_ade_full_seg(seg: np.ndarray, source: str = "<array>") -> np.ndarray:
    """ADE20K ``*_seg.png`` (H, W, >=3) uint8 -> object class id ``(R / 10) * 256 + G`` as int32.

    ``R / 10`` truncated towards zero (the script's ``(R / 10).astype(np.int32)``), i.e. ``R // 10``.
    """
    seg = np.asarray(seg)
    if seg.ndim != 3 or seg.shape[2] < 3 or seg.dtype != np.uint8:
        raise UnexpectedRawValueError(f"{source}: expected an 8-bit RGB *_seg.png, got shape {seg.shape} "
                                      f"dtype {seg.dtype}")
    r = seg[:, :, 0].astype(np.int32)
    g = seg[:, :, 1].astype(np.int32)
    return (r // 10) * 256 + g


def ade847_resized_size(h: int, w: int, max_size: int = ADE847_MAX_SHORT) -> tuple[int, int] | None:
    """New (h, w) of the preparation's shrink rule, or None when the image is kept.

    ``w >= h > 512``: (512, round(w / h * 512)); ``h >= w > 512``: (round(h / w * 512), 512); otherwise kept
    (Python's ``round``, half to even).
    """
    if w >= h > max_size:
        return max_size, round(w / float(h) * max_size)
    if h >= w > max_size:
        return round(h / float(w) * max_size), max_size
    return None


def convert_ade847(image: np.ndarray, seg: np.ndarray, source: str = "<array>") -> tuple[np.ndarray, np.ndarray]:
    """(image as decoded by PIL, ``*_seg.png`` RGB) -> (image, uint16 train-id label), both shrunk alike.

    Image: OpenCV ``INTER_LINEAR``; class-id map: ``INTER_NEAREST`` on int32; then ids -> train ids through
    the 847-entry table, anything else (0 = unlabeled, the classes outside the 847) -> 65535.
    """
    import cv2  # here: only this preparer needs OpenCV (keeps proxyclip-prepare's start quick)

    ids = decode_ade_full_seg(seg, source)
    if image.shape[:2] != ids.shape:
        raise UnexpectedRawValueError(f"{source}: image is {image.shape[1]}x{image.shape[0]} but its _seg.png is "
                                      f"{ids.shape[1]}x{ids.shape[0]}")
    size = ade847_resized_size(*ids.shape)
    if size is not None:
        h_new, w_new = size
        image = cv2.resize(image, (w_new, h_new), interpolation=cv2.INTER_LINEAR)
        ids = cv2.resize(ids, (w_new, h_new), interpolation=cv2.INTER_NEAREST)
    return image, ade847_lut()[ids]


def convert_pc459(label_map: np.ndarray, source: str = "<array>") -> np.ndarray:
    """PASCAL Context 459 ``LabelMap`` (1-based) -> uint16 train ids 0..458; 0 (unlabeled) -> 65535.

    The official script writes ``LabelMap - 1`` on the stored uint16 array, so 0 wraps to 65535.
    Raises :class:`UnexpectedRawValueError` for values outside 0..459.
    """
    lab = np.asarray(label_map)
    if lab.ndim != 2 or not (np.issubdtype(lab.dtype, np.integer) or np.issubdtype(lab.dtype, np.floating)):
        raise UnexpectedRawValueError(f"{source}: LabelMap must be a 2-D integer map, got shape {lab.shape} "
                                      f"dtype {lab.dtype}")
    lab64 = lab.astype(np.int64)
    if np.issubdtype(lab.dtype, np.floating) and not np.array_equal(lab64, lab):
        raise UnexpectedRawValueError(f"{source}: LabelMap holds non-integer values")
    bad = np.unique(lab64[(lab64 < 0) | (lab64 > 459)])
    if bad.size:
        raise UnexpectedRawValueError(f"{source}: LabelMap values {bad[:20].tolist()} outside 0..459 "
                                      "(PASCAL Context 459 ids are 1..459, 0 = unlabeled)")
    out = lab64 - 1
    out[out < 0] = UNLABELED_16BIT
    return out.astype(np.uint16)

