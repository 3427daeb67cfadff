"""The file handling every preparer shares: atomic writes, links or copies, progress, the final layout check and
the EXIF-orientation report."""
from __future__ import annotations

import os
import shutil
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .presets import BENCHMARKS

try:  # tqdm ships with timm/huggingface; fall back silently if absent.
    from tqdm import tqdm as _tqdm
except ImportError:  # pragma: no cover
    _tqdm = None


class PreparationError(ValueError):
    """Raw data are missing or malformed; the message names the path (a user error: one line in the CLI)."""


def progress_bar(it: Iterable, total: int | None, desc: str, enable: bool = True):
    if _tqdm is None or not enable:
        return it
    return _tqdm(it, total=total, desc=desc, unit="file", dynamic_ncols=True, file=sys.stderr)


# =====================================================================================
# File helpers
# =====================================================================================

def save_png_atomic(arr: np.ndarray, path: Path) -> None:
    """Write uint8 (H, W) as an 'L' PNG via a temp file, so interrupted runs leave no partial PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(tmp)  # 2-D uint8 -> mode L
    os.replace(tmp, path)


def save_tif16_atomic(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.tif")
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint16)).save(tmp)  # mode I;16, as the official script
    os.replace(tmp, path)


def save_jpeg_atomic(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.jpg")
    Image.fromarray(arr).save(tmp)  # PIL's default JPEG quality (75), as the official script
    os.replace(tmp, path)


def write_text_atomic(text: str, path: Path) -> bool:
    """Write ``text`` unless identical content is already there; returns whether it wrote."""
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


def find_dir(src: Path, candidates: Sequence[str], must_contain: str, what: str) -> Path:
    """First ``src/<candidate>`` that contains ``must_contain``."""
    for cand in candidates:
        d = src / cand if cand else src
        if (d / must_contain).exists():
            return d
    tried = "\n  ".join(str((src / c if c else src) / must_contain) for c in candidates)
    raise PreparationError(f"cannot find {what} under --src {src}; looked for:\n  {tried}")


def link_or_copy(src: Path, dst: Path, mode: str) -> str:
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


def final_check(keys: Sequence[str], dst: Path) -> dict[str, int]:
    """Verify the prepared layout with the datamodules; subsets warn, errors raise."""
    from .base import SegmentationDataModule  # here: Lightning is needed only for this final check

    counts = {}
    for key in keys:
        dm = SegmentationDataModule(BENCHMARKS[key], data_root=dst, num_workers=0)
        counts[key] = len(dm.verify())
        print(f"[{key}] {counts[key]} / {BENCHMARKS[key].expected_num_images} validation samples at {dst}")
    return counts


def scan_exif_orientation(paths: Iterable[Path]) -> list[tuple[Path, int]]:
    """(path, orientation) for every JPEG whose EXIF tag 0x0112 is not 1.

    See docs/dataset_notes.md, 'EXIF orientation': the datamodules apply the tag when loading.
    """
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

def provide_unconverted(src: Path, candidates: Sequence[str], marker: str, what: str, subs: Sequence[str],
                         dst: Path, key: str, image_dir: str, link_mode: str, progress: bool) -> PrepareStats:
    """Locate a dataset that needs no conversion in ``src`` and provide its folders at ``dst``."""
    root = find_dir(Path(src), candidates, marker, what)
    stats = PrepareStats()
    for sub in subs:
        if link_or_copy(root / sub, Path(dst) / sub, link_mode) in ("symlink", "copy"):
            stats.linked += 1
    final_check([key], Path(dst))
    if progress:
        _report_exif(Path(dst), image_dir, ".jpg")
    return stats
