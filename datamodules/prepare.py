"""Dataset preparation: official downloads -> the layouts the datamodules read.

Every converter is a per-pixel lookup on the *original* array (benchmarks.md §4), writes
uint8 'L' PNGs atomically, skips outputs that already exist (a rerun is a no-op) and
ends with a count check that warns on subsets.  The CLI is ``scripts/prepare_data.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .io import read_label

try:  # tqdm ships with timm/huggingface; fall back silently if absent.
    from tqdm import tqdm as _tqdm
except ImportError:  # pragma: no cover
    _tqdm = None


class PreparationError(RuntimeError):
    """Raw data are missing or malformed; the message names the path."""


class ConversionWarning(UserWarning):
    """Unexpected raw values were mapped to a fallback value."""


class UnexpectedRawValueError(ValueError):
    """A raw label map holds values the official data never contain; the message names the file and values."""


def _progress(it: Iterable, total: int | None, desc: str, enable: bool = True):
    if _tqdm is None or not enable:
        return it
    return _tqdm(it, total=total, desc=desc, unit="file", dynamic_ncols=True, file=sys.stderr)


# =====================================================================================
# Lookup tables (benchmarks.md §4)
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
            ids without masks, or > 181 other than 255). benchmarks.md §4 asks to fail loudly: such a map is
            not an official stuffthingmap (wrong file, or already converted), and mapping the values to
            255 would silently drop pixels from the evaluation.
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
# COCO run-length encoding (as used by the PASCAL-in-Detail JSON)
# =====================================================================================

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


def counts_to_rle_string(counts: Sequence[int]) -> str:
    """Inverse of :func:`rle_string_to_counts` (used to build test fixtures)."""
    out = []
    for i, cnt in enumerate(counts):
        x = int(cnt) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


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


def counts_from_mask(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts of a bool mask (column-major; fixtures helper)."""
    flat = np.asarray(mask, dtype=bool).T.ravel()
    counts, cur, run = [], False, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    return counts


# =====================================================================================
# File helpers
# =====================================================================================

def _save_png_atomic(arr: np.ndarray, path: Path) -> None:
    """Write uint8 (H, W) as an 'L' PNG via a temp file, so interrupted runs leave no partial PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(tmp)  # 2-D uint8 -> mode L
    os.replace(tmp, path)


def _write_text_atomic(text: str, path: Path) -> bool:
    """Write ``text`` unless identical content is already there; returns whether it wrote."""
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


def _find_dir(src: Path, candidates: Sequence[str], must_contain: str, what: str) -> Path:
    """First ``src/<candidate>`` that contains ``must_contain``."""
    for cand in candidates:
        d = src / cand if cand else src
        if (d / must_contain).exists():
            return d
    tried = "\n  ".join(str((src / c if c else src) / must_contain) for c in candidates)
    raise PreparationError(f"cannot find {what} under --src {src}; looked for:\n  {tried}")


def _link_or_copy(src: Path, dst: Path, mode: str) -> str:
    """Make ``dst`` provide ``src``'s content: no-op if already so, else symlink or copy."""
    if dst.exists() or dst.is_symlink():
        if dst.resolve() == src.resolve():
            return "kept"
        return "exists"  # user-provided folder: leave it, the final check verifies it
    dst.parent.mkdir(parents=True, exist_ok=True)
    if mode == "copy":
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)
    else:
        dst.symlink_to(src.resolve(), target_is_directory=src.is_dir())
    return mode


@dataclass
class PrepareStats:
    written: int = 0
    skipped: int = 0
    linked: int = 0

    def __str__(self) -> str:
        return f"{self.written} written, {self.skipped} already present, {self.linked} folders linked"


def _final_check(keys: Sequence[str], dst: Path) -> dict[str, int]:
    """Verify the prepared layout with the datamodules; subsets warn, errors raise."""
    from .base import SegmentationDataModule  # local import: keeps prepare usable standalone
    from .presets import BENCHMARKS

    counts = {}
    for key in keys:
        dm = SegmentationDataModule(BENCHMARKS[key], data_root=dst, num_workers=0)
        counts[key] = len(dm.verify())
        print(f"[{key}] {counts[key]} / {BENCHMARKS[key].expected_num_images} validation samples at {dst}")
    return counts


def scan_exif_orientation(paths: Iterable[Path]) -> list[tuple[Path, int]]:
    """(path, orientation) for every JPEG whose EXIF tag 0x0112 is not 1 (benchmarks.md §2.2)."""
    found = []
    for p in paths:
        try:
            with Image.open(p) as im:
                o = im.getexif().get(0x0112, 1)
        except Exception:  # corrupt files are reported by the datamodule, not here
            continue
        if o not in (1, None):
            found.append((Path(p), int(o)))
    return found


def _report_exif(root: Path, img_dir: str, suffix: str) -> None:
    paths = sorted((root / img_dir).rglob(f"*{suffix}"))
    tagged = scan_exif_orientation(paths)
    if tagged:
        warnings.warn(f"{len(tagged)} image(s) carry an EXIF orientation tag (applied when loading), "
                      f"e.g. {tagged[0][0]} (orientation {tagged[0][1]})", stacklevel=2)
    else:
        print(f"EXIF scan: no orientation tags among {len(paths)} images in {root / img_dir}")


# =====================================================================================
# Per-dataset preparation
# =====================================================================================

def _provide_unconverted(src: Path, candidates: Sequence[str], marker: str, what: str, subs: Sequence[str],
                         dst: Path, key: str, image_dir: str, link_mode: str, progress: bool) -> PrepareStats:
    """Locate a dataset that needs no conversion in ``src`` and provide its folders at ``dst``."""
    root = _find_dir(Path(src), candidates, marker, what)
    stats = PrepareStats()
    for sub in subs:
        if _link_or_copy(root / sub, Path(dst) / sub, link_mode) in ("symlink", "copy"):
            stats.linked += 1
    _final_check([key], Path(dst))
    if progress:
        _report_exif(Path(dst), image_dir, ".jpg")
    return stats


def prepare_voc(src: Path, dst: Path, link_mode: str = "symlink", progress: bool = True) -> PrepareStats:
    """VOC2012: no conversion; locate the VOC2012 folder in ``src`` and provide it at ``dst``."""
    return _provide_unconverted(
        src, ["", "VOC2012", "VOCdevkit/VOC2012", "VOCtrainval_11-May-2012/VOCdevkit/VOC2012"],
        "ImageSets/Segmentation/val.txt", "the VOC2012 folder", ("JPEGImages", "SegmentationClass", "ImageSets"),
        dst, "voc21", "JPEGImages", link_mode, progress)


def prepare_ade20k(src: Path, dst: Path, link_mode: str = "symlink", progress: bool = True) -> PrepareStats:
    """ADEChallengeData2016: no conversion; provide ``images/`` and ``annotations/`` at ``dst``."""
    return _provide_unconverted(
        src, ["", "ADEChallengeData2016", "ade/ADEChallengeData2016"], "annotations/validation",
        "the ADEChallengeData2016 folder", ("images", "annotations"), dst, "ade20k", "images/validation",
        link_mode, progress)


def prepare_context(src: Path, dst: Path, json_path: Path | None = None, phases: Sequence[str] = ("train", "val"),
                    link_mode: str = "symlink", progress: bool = True) -> PrepareStats:
    """PASCAL Context from ``trainval_merged.json`` -> ``SegmentationClassContext/*.png`` + split files.

    Masks paint each segmentation annotation's category id on a zero canvas in JSON order
    (later annotations win), then map raw ids to 0..59 by rank (§4.1).
    """
    src, dst = Path(src), Path(dst)
    root = _find_dir(src, ["", "VOC2010", "VOCdevkit/VOC2010"], "JPEGImages", "the VOC2010 folder")
    if json_path is None:
        cands = [src / "trainval_merged.json", root / "trainval_merged.json", dst / "trainval_merged.json"]
        json_path = next((c for c in cands if c.is_file()), None)
        if json_path is None:
            raise PreparationError("cannot find trainval_merged.json; looked in:\n  "
                                   + "\n  ".join(map(str, cands)) + "\n  (pass --json PATH)")
    json_path = Path(json_path)
    if not json_path.is_file():
        raise PreparationError(f"annotation file not found: {json_path}")
    stats = PrepareStats()
    if _link_or_copy(root / "JPEGImages", dst / "JPEGImages", link_mode) in ("symlink", "copy"):
        stats.linked += 1
    try:
        data = json.loads(json_path.read_text())
        images, anns = data["images"], data["annos_segmentation"]
    except (ValueError, KeyError, TypeError) as exc:
        raise PreparationError(f"{json_path} is not a PASCAL-in-Detail annotation file: {exc!r}") from exc
    by_image: dict[int, list[dict]] = {}
    for ann in anns:  # JSON order is the paint order
        by_image.setdefault(ann["image_id"], []).append(ann)
    out_dir = dst / "SegmentationClassContext"
    for phase in phases:
        imgs = [im for im in images if im.get("phase") == phase]
        ids = []
        for im in _progress(imgs, len(imgs), f"context {phase}", progress):
            sid = Path(im["file_name"]).stem
            ids.append(sid)
            out = out_dir / f"{sid}.png"
            if out.is_file():
                stats.skipped += 1
                continue
            canvas = np.zeros((int(im["height"]), int(im["width"])), dtype=np.int64)
            for ann in by_image.get(im["image_id"], []):
                m = decode_rle(ann["segmentation"])
                if m.shape != canvas.shape:
                    raise PreparationError(f"{json_path}: annotation {ann.get('id')} of {sid} has size "
                                           f"{m.shape}, image is {canvas.shape}")
                canvas[m] = ann["category_id"]
            _save_png_atomic(convert_context_raw(canvas, source=sid), out)
            stats.written += 1
        if _write_text_atomic("".join(f"{i}\n" for i in sorted(ids)),
                              dst / "ImageSets/SegmentationContext" / f"{phase}.txt"):
            stats.written += 1
    if "val" in phases:
        _final_check(["context60"], dst)
    return stats


def prepare_coco(src: Path, dst: Path, targets: Sequence[str] = ("coco_stuff", "coco_object"),
                 split: str = "val2017", link_mode: str = "symlink", progress: bool = True) -> PrepareStats:
    """COCO-Stuff-164k stuffthingmaps -> ``<id>_labelTrainIds.png`` / ``<id>_instanceTrainIds.png``.

    Outputs are written next to the raw maps under ``dst/annotations/<split>``; images are
    provided at ``dst/images/<split>``.
    """
    src, dst = Path(src), Path(dst)
    img_root = next((src / c for c in (f"images/{split}", split, f"coco_stuff164k/images/{split}")
                     if (src / c).is_dir() and any((src / c).glob("*.jpg"))), None)
    if img_root is None:
        raise PreparationError(f"cannot find the {split} images (*.jpg) under --src {src}; looked in "
                               f"images/{split} and {split}")
    raw_root = None
    for cand in (f"annotations/{split}", f"stuffthingmaps_trainval2017/{split}", f"stuffthingmaps/{split}", split):
        d = src / cand
        if d.is_dir() and any(p for p in d.glob("*.png") if "TrainIds" not in p.name):
            raw_root = d
            break
    if raw_root is None:
        raise PreparationError(f"cannot find raw stuffthingmaps (<id>.png) under --src {src}; looked in "
                               f"annotations/{split}, stuffthingmaps_trainval2017/{split}, {split}")
    stats = PrepareStats()
    if _link_or_copy(img_root, dst / "images" / split, link_mode) in ("symlink", "copy"):
        stats.linked += 1
    out_dir = dst / "annotations" / split
    raws = sorted(p for p in raw_root.glob("*.png") if "TrainIds" not in p.name and not p.name.endswith(".tmp.png"))
    suffixes = {"coco_stuff": "_labelTrainIds.png", "coco_object": "_instanceTrainIds.png"}
    for raw_path in _progress(raws, len(raws), f"coco {split}", progress):
        outs = {t: out_dir / f"{raw_path.stem}{suffixes[t]}" for t in targets}
        if all(o.is_file() for o in outs.values()):
            stats.skipped += 1
            continue
        stuff, obj = convert_coco_stuffthingmap(read_label(raw_path), source=str(raw_path))
        for t, out in outs.items():
            _save_png_atomic(stuff if t == "coco_stuff" else obj, out)
        stats.written += 1
    if split == "val2017":
        _final_check(list(targets), dst)
    return stats


def prepare_cityscapes(src: Path, dst: Path, split: str = "val", link_mode: str = "symlink",
                       progress: bool = True) -> PrepareStats:
    """Cityscapes ``*_gtFine_labelIds.png`` -> ``*_gtFine_labelTrainIds.png`` (per-pixel LUT, §4.3)."""
    src, dst = Path(src), Path(dst)
    root = _find_dir(src, ["", "cityscapes"], f"gtFine/{split}", "the Cityscapes folder (gtFine/, leftImg8bit/)")
    if not (root / "leftImg8bit" / split).is_dir():
        raise PreparationError(f"missing folder {root / 'leftImg8bit' / split} (extract leftImg8bit_trainvaltest.zip)")
    stats = PrepareStats()
    if _link_or_copy(root / "leftImg8bit" / split, dst / "leftImg8bit" / split, link_mode) in ("symlink", "copy"):
        stats.linked += 1
    raws = sorted((root / "gtFine" / split).rglob("*_gtFine_labelIds.png"))
    if not raws:
        raise PreparationError(f"no *_gtFine_labelIds.png under {root / 'gtFine' / split}")
    for raw_path in _progress(raws, len(raws), f"cityscapes {split}", progress):
        rel = raw_path.relative_to(root / "gtFine" / split)
        out = dst / "gtFine" / split / rel.parent / raw_path.name.replace("_labelIds.png", "_labelTrainIds.png")
        if out.is_file():
            stats.skipped += 1
            continue
        _save_png_atomic(convert_cityscapes_label_ids(read_label(raw_path)), out)
        stats.written += 1
    if split == "val":
        _final_check(["cityscapes"], dst)
    return stats


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
    import cv2

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


def _save_tif16_atomic(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.tif")
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint16)).save(tmp)  # mode I;16, as the official script
    os.replace(tmp, path)


def _save_jpeg_atomic(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.jpg")
    Image.fromarray(arr).save(tmp)  # PIL's default JPEG quality (75), as the official script
    os.replace(tmp, path)


def _ade847_sources(src: Path, dst: Path) -> list[Path]:
    """Validation images of ADE20K_2021_17_01: ``*.jpg`` whose name's second '_' field is 'val'."""
    base = src / "images" if (src / "images").is_dir() else src
    skip = {(dst / "images_detectron2").resolve()}
    found = []
    for dirpath, dirs, files in os.walk(base, followlinks=True):
        dirs[:] = [d for d in dirs if (Path(dirpath) / d).resolve() not in skip]
        for name in files:
            parts = name.split("_")
            if name.endswith(".jpg") and not name.startswith(".") and len(parts) > 1 and parts[1] == "val":
                found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: p.name)


def prepare_ade847(src: Path, dst: Path, progress: bool = True) -> PrepareStats:
    """ADE20K_2021_17_01 -> ``images_detectron2/validation`` (JPEG), ``annotations_detectron2/validation``
    (uint16 TIFF) and ``validation.txt`` at ``dst`` (CAT-Seg ``prepare_ade20k_full.py``, validation only).

    The validation images are found by walking ``src/images`` (the rule of the script's pickled index:
    file name ``*_val_*.jpg``), each with its ``<stem>_seg.png``.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise PreparationError(f"--src {src} does not exist (expected the extracted ADE20K_2021_17_01 folder)")
    images = _ade847_sources(src, dst)
    if not images:
        raise PreparationError(f"no validation images (ADE_val_*.jpg) under {src / 'images' if (src / 'images').is_dir() else src}; "
                               "--src must be the extracted ADE20K_2021_17_01 folder")
    names = [p.name for p in images]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})[:5]
        raise PreparationError(f"validation image names occur more than once under {src}: {dup}")
    missing = [p.with_name(p.stem + "_seg.png") for p in images if not p.with_name(p.stem + "_seg.png").is_file()]
    if missing:
        raise PreparationError(f"{len(missing)} validation image(s) have no _seg.png next to them, e.g. {missing[0]}")
    stats = PrepareStats()
    img_out, ann_out = dst / "images_detectron2" / "validation", dst / "annotations_detectron2" / "validation"
    for path in _progress(images, len(images), "ade847 validation", progress):
        out_img, out_lab = img_out / path.name, ann_out / f"{path.stem}.tif"
        if out_img.is_file() and out_lab.is_file():
            stats.skipped += 1
            continue
        seg_path = path.with_name(path.stem + "_seg.png")
        try:
            with Image.open(path) as im:
                if im.mode not in ("L", "RGB"):
                    im = im.convert("RGB")
                image = np.asarray(im)
            with Image.open(seg_path) as im:
                seg = np.asarray(im.convert("RGB") if im.mode not in ("RGB", "RGBA") else im)
        except OSError as exc:
            raise PreparationError(f"cannot read {path} or {seg_path}: {exc}") from exc
        image, label = convert_ade847(image, seg, source=str(seg_path))
        _save_jpeg_atomic(image, out_img)
        _save_tif16_atomic(label, out_lab)
        stats.written += 1
    if _write_text_atomic("".join(f"{p.stem}\n" for p in images), dst / "validation.txt"):
        stats.written += 1
    _final_check(["ade847"], dst)
    return stats


def _read_labels_txt(path: Path) -> dict[int, str]:
    """PASCAL Context ``labels.txt`` (``<id>: <name>`` lines) -> {id: name}; checks ids 1..459."""
    table = {}
    for line in path.read_text().splitlines():
        if ":" in line:
            idx, name = line.split(":", 1)
            try:
                table[int(idx.strip())] = name.strip()
            except ValueError:
                raise PreparationError(f"{path}: malformed line {line!r} (expected '<id>: <name>')") from None
    if sorted(table) != list(range(1, 460)):
        raise PreparationError(f"{path} lists {len(table)} ids; the PASCAL Context 459 labels.txt has ids 1..459")
    return table


def load_labelmap_mat(path: Path) -> np.ndarray:
    """``LabelMap`` of a PASCAL Context ``trainval/<id>.mat`` (needs SciPy: ``pip install .[prepare]``)."""
    try:
        import scipy.io
    except ImportError:
        raise PreparationError("reading the PASCAL Context 459 .mat label maps needs SciPy: "
                               "pip install scipy (or the package's 'prepare' extra)") from None
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:
        raise PreparationError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    if "LabelMap" not in mat:
        raise PreparationError(f"{path} has no 'LabelMap' variable (keys: {sorted(k for k in mat if not k.startswith('__'))})")
    return mat["LabelMap"]


def prepare_context459(src: Path, dst: Path, link_mode: str = "symlink", progress: bool = True) -> PrepareStats:
    """VOC2010 + ``trainval/*.mat`` (+ ``labels.txt``) -> ``annotations_detectron2/pc459_val/<id>.tif``
    (``LabelMap - 1`` as uint16, 0 -> 65535) for the val ids, ``JPEGImages`` provided at ``dst`` and the split
    ``ImageSets/SegmentationContext/val.txt`` (CAT-Seg ``prepare_pascal_context_459.py``).

    Val ids: ``ImageSets/SegmentationContext/val.txt`` of the VOC2010 folder (the Context-60 preparation
    writes it), else ``pascalcontext_val.txt`` (the file the CAT-Seg script reads).
    """
    src, dst = Path(src), Path(dst)
    root = _find_dir(src, ["", "VOC2010", "VOCdevkit/VOC2010"], "JPEGImages", "the VOC2010 folder")
    mat_dir = next((d for d in (root / "trainval", src / "trainval", src) if d.is_dir() and any(d.glob("*.mat"))), None)
    if mat_dir is None:
        raise PreparationError(f"cannot find the 459-label maps (trainval/*.mat) under {root} or {src}; extract "
                               "trainval.tar.gz of PASCAL Context there")
    for cand in (root / "labels.txt", src / "labels.txt", mat_dir / "labels.txt", mat_dir.parent / "labels.txt"):
        if cand.is_file():
            _read_labels_txt(cand)
            break
    else:
        warnings.warn("labels.txt (PASCAL Context 459 names) not found next to trainval/: ids not cross-checked",
                      ConversionWarning, stacklevel=2)
    split_cands = [dst / "ImageSets/SegmentationContext/val.txt", root / "ImageSets/SegmentationContext/val.txt",
                   root / "pascalcontext_val.txt", src / "pascalcontext_val.txt"]
    split = next((c for c in split_cands if c.is_file()), None)
    if split is None:
        raise PreparationError("cannot find the validation id list; looked for:\n  " + "\n  ".join(map(str, split_cands)))
    ids = [line.strip() for line in split.read_text().splitlines() if line.strip()]
    missing = [i for i in ids if not (mat_dir / f"{i}.mat").is_file()]
    if missing:
        raise PreparationError(f"{len(missing)} of the {len(ids)} ids of {split} have no label map in {mat_dir}, "
                               f"e.g. {mat_dir / (missing[0] + '.mat')}")
    stats = PrepareStats()
    if _link_or_copy(root / "JPEGImages", dst / "JPEGImages", link_mode) in ("symlink", "copy"):
        stats.linked += 1
    out_dir = dst / "annotations_detectron2" / "pc459_val"
    for sid in _progress(ids, len(ids), "context459 val", progress):
        out = out_dir / f"{sid}.tif"
        if out.is_file():
            stats.skipped += 1
            continue
        mat = mat_dir / f"{sid}.mat"
        _save_tif16_atomic(convert_pc459(load_labelmap_mat(mat), source=str(mat)), out)
        stats.written += 1
    target = dst / "ImageSets/SegmentationContext/val.txt"
    if split != target:
        if target.is_file():
            theirs = [x.strip() for x in target.read_text().splitlines() if x.strip()]
            if sorted(theirs) != sorted(ids):
                raise PreparationError(f"{target} exists with other ids than {split}; remove one of them")
        elif _write_text_atomic("".join(f"{i}\n" for i in ids), target):
            stats.written += 1
    _final_check(["context459"], dst)
    return stats


# =====================================================================================
# Downloads (URL + checksum, resumable via HTTP Range)
# =====================================================================================

@dataclass(frozen=True)
class Archive:
    url: str
    md5: str | None = None  # None: not verified offline -> skipped with a warning
    sha256: str | None = None
    extract_to: str = ""  # sub-folder of --src to extract into; "" = --src itself
    extract: bool = True

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


OFFICIAL_ARCHIVES: dict[str, list[Archive]] = {
    "voc": [Archive("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                    md5="6cd6e144f989b92b3379bac3b3de84fd")],
    "context": [Archive("http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar",
                        md5="da459979d0c395079b5c75ee67908abb"),
                Archive("https://codalabuser.blob.core.windows.net/public/trainval_merged.json", extract=False)],
    "coco_stuff": [Archive("http://images.cocodataset.org/zips/val2017.zip", extract_to="images"),
                   Archive("http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/"
                           "stuffthingmaps_trainval2017.zip", extract_to="annotations")],
    "ade20k": [Archive("http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip")],
    # Cityscapes needs a login: https://www.cityscapes-dataset.com/downloads/ (packages 1 and 3).
    "cityscapes": [],
    "ade847": [],  # registration required
    "context459": [],  # VOC2010 (see "context") + trainval.tar.gz of PASCAL Context: download by hand
}
OFFICIAL_ARCHIVES["coco_object"] = OFFICIAL_ARCHIVES["coco_stuff"]

MANUAL_DOWNLOADS = {
    "ade847": "register at https://groups.csail.mit.edu/vision/datasets/ADE20K/, download ADE20K_2021_17_01.zip "
              "and extract it; pass the ADE20K_2021_17_01 folder as --src",
    "context459": "extract VOCtrainval_03-May-2010.tar and PASCAL Context's trainval.tar.gz (459-label .mat "
                  "maps + labels.txt, https://cs.stanford.edu/~roozbeh/pascal-context/) into the VOC2010 folder",
}


def file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_digest(path: Path, md5: str | None, sha256: str | None) -> bool:
    """True if the checksums match; True with a warning when none is known."""
    if md5 is None and sha256 is None:
        warnings.warn(f"no known checksum for {path.name}; integrity not verified", stacklevel=3)
        return True
    if sha256 is not None and file_digest(path, "sha256") != sha256.lower():
        return False
    if md5 is not None and file_digest(path, "md5") != md5.lower():
        return False
    return True


def download(url: str, dest: Path, md5: str | None = None, sha256: str | None = None,
             progress: bool = True, chunk_size: int = 1 << 20, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest``; resume a partial ``dest.part`` with an HTTP Range request.

    Idempotent: an existing ``dest`` with a matching checksum is kept.  A server that
    ignores the Range header (status 200) restarts the file.  Accepts ``file://`` URLs and
    local paths.  Raises :class:`PreparationError` on a checksum mismatch.
    """
    dest = Path(dest)
    if dest.is_file():
        if _check_digest(dest, md5, sha256):
            return dest
        raise PreparationError(f"{dest} exists but its checksum does not match {url}; delete it and retry")
    if "://" not in url:
        url = Path(url).resolve().as_uri()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "datamodules-prepare/1.0"})
    if offset and url.startswith(("http://", "https://")):
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the partial file is already complete
            resp = None
        else:
            raise PreparationError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise PreparationError(f"download of {url} failed: {exc.reason}") from exc
    if resp is not None:
        with resp:
            status = getattr(resp, "status", None) or resp.getcode()
            if offset and status != 206:
                offset = 0  # Range ignored: start over
            length = resp.headers.get("Content-Length")
            total = (int(length) + offset) if length is not None else None
            bar = (_tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=dest.name, file=sys.stderr)
                   if (_tqdm is not None and progress) else None)
            with open(part, "ab" if offset else "wb") as f:
                while True:
                    chunk = resp.read(chunk_size)
                    if not chunk:
                        break
                    f.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            if bar is not None:
                bar.close()
    if not _check_digest(part, md5, sha256):
        bad = part.with_name(part.name + ".corrupt")
        os.replace(part, bad)
        raise PreparationError(f"checksum mismatch for {url} (moved the file to {bad})")
    os.replace(part, dest)
    return dest


def extract(archive: Path, out_dir: Path) -> Path:
    """Extract a tar/zip archive into ``out_dir`` once (a marker file makes reruns no-ops)."""
    archive, out_dir = Path(archive), Path(out_dir)
    marker = out_dir / f".extracted-{archive.name}"
    if marker.is_file():
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir.resolve()

    def _safe(name: str) -> None:
        target = (out_dir / name).resolve()
        if base != target and base not in target.parents:
            raise PreparationError(f"{archive} contains a path outside the target folder: {name}")

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for n in zf.namelist():
                _safe(n)
            zf.extractall(out_dir)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            for m in tf.getmembers():
                _safe(m.name)
            try:
                tf.extractall(out_dir, filter="data")
            except TypeError:  # Python without extraction filters; members were checked above
                tf.extractall(out_dir)
    else:
        raise PreparationError(f"{archive} is neither a zip nor a tar archive")
    marker.write_text("ok\n")
    return out_dir


def fetch_official(dataset: str, src: Path, archives: Sequence[Archive] | None = None,
                   progress: bool = True) -> None:
    """Download (resumably) and extract the official archives of ``dataset`` into ``src``."""
    archives = OFFICIAL_ARCHIVES[dataset] if archives is None else archives
    if not archives and dataset in MANUAL_DOWNLOADS:
        raise PreparationError(f"{dataset} cannot be downloaded automatically; {MANUAL_DOWNLOADS[dataset]}")
    if not archives:
        raise PreparationError(f"{dataset} cannot be downloaded automatically (login required); download "
                               "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
                               "https://www.cityscapes-dataset.com/downloads/ and extract them into --src")
    src = Path(src)
    for a in archives:
        path = download(a.url, src / "downloads" / a.filename, md5=a.md5, sha256=a.sha256, progress=progress)
        if a.extract:
            extract(path, src / a.extract_to)
        elif not (src / a.filename).exists():
            shutil.copy2(path, src / a.filename)


# =====================================================================================
# CLI
# =====================================================================================

DATASETS = ("voc", "context", "coco_stuff", "coco_object", "cityscapes", "ade20k", "ade847", "context459")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prepare_data.py", description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("--src", required=True, type=Path, help="extracted official download (or where to put it)")
    p.add_argument("--dst", required=True, type=Path, help="dataset root read by build_datamodule")
    p.add_argument("--download", action="store_true", help="fetch the official archive(s) into --src first")
    p.add_argument("--json", type=Path, default=None, help="context: path to trainval_merged.json")
    p.add_argument("--copy", action="store_true", help="copy instead of symlinking unconverted folders")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    progress = not args.no_progress
    link_mode = "copy" if args.copy else "symlink"
    try:
        if args.download:
            fetch_official(args.dataset, args.src, progress=progress)
        if args.dataset == "voc":
            stats = prepare_voc(args.src, args.dst, link_mode, progress)
        elif args.dataset == "ade20k":
            stats = prepare_ade20k(args.src, args.dst, link_mode, progress)
        elif args.dataset == "context":
            stats = prepare_context(args.src, args.dst, args.json, link_mode=link_mode, progress=progress)
        elif args.dataset in ("coco_stuff", "coco_object"):
            # Both label sets come from the same maps; converting both costs one extra PNG write.
            stats = prepare_coco(args.src, args.dst, link_mode=link_mode, progress=progress)
        elif args.dataset == "ade847":
            stats = prepare_ade847(args.src, args.dst, progress=progress)
        elif args.dataset == "context459":
            stats = prepare_context459(args.src, args.dst, link_mode=link_mode, progress=progress)
        else:
            stats = prepare_cityscapes(args.src, args.dst, link_mode=link_mode, progress=progress)
    except (PreparationError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.dataset}: {stats}")
    return 0
