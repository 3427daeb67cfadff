"""Per-dataset preparation: official downloads -> the layouts the datamodules read.

One preparer per benchmark, registered in :data:`PREPARERS` (dataset key -> preparer).  Each locates the
raw data under ``src``, converts labels with the tables of :mod:`datamodules.label_tables`, writes
uint8 'L' PNGs (16-bit TIFFs for ADE-847 / PASCAL Context 459) atomically, skips outputs that already exist
(a rerun is a no-op) and ends with the datamodule's count check, which warns on subsets.  Downloads live
in :mod:`datamodules.downloads`; the CLI is ``scripts/prepare_data.py``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .io import read_label
from .label_tables import (
    ConversionWarning,
    convert_ade847,
    convert_cityscapes_label_ids,
    convert_coco_stuffthingmap,
    convert_context_raw,
    convert_pc459,
)
from .prepare_io import (PreparationError, PrepareStats, final_check, find_dir, link_or_copy, progress_bar,
                         provide_unconverted, save_jpeg_atomic, save_png_atomic, save_tif16_atomic, write_text_atomic)
from .rle import decode_rle

try:  # tqdm ships with timm/huggingface; fall back silently if absent.
    from tqdm import tqdm as _tqdm
except ImportError:  # pragma: no cover
    _tqdm = None


def prepare_voc(src: Path, dst: Path, link_mode: str = "symlink", progress: bool = True) -> PrepareStats:
    """VOC2012: no conversion; locate the VOC2012 folder in ``src`` and provide it at ``dst``."""
    return provide_unconverted(
        src, ["", "VOC2012", "VOCdevkit/VOC2012", "VOCtrainval_11-May-2012/VOCdevkit/VOC2012"],
        "ImageSets/Segmentation/val.txt", "the VOC2012 folder", ("JPEGImages", "SegmentationClass", "ImageSets"),
        dst, "voc21", "JPEGImages", link_mode, progress)


def prepare_ade20k(src: Path, dst: Path, link_mode: str = "symlink", progress: bool = True) -> PrepareStats:
    """ADEChallengeData2016: no conversion; provide ``images/`` and ``annotations/`` at ``dst``."""
    return provide_unconverted(
        src, ["", "ADEChallengeData2016", "ade/ADEChallengeData2016"], "annotations/validation",
        "the ADEChallengeData2016 folder", ("images", "annotations"), dst, "ade20k", "images/validation",
        link_mode, progress)


def prepare_context(src: Path, dst: Path, json_path: Path | None = None, phases: Sequence[str] = ("train", "val"),
                    link_mode: str = "symlink", progress: bool = True) -> PrepareStats:
    """PASCAL Context from ``trainval_merged.json`` -> ``SegmentationClassContext/*.png`` + split files.

    Masks paint each segmentation annotation's category id on a zero canvas in JSON order
    (later annotations win), then map raw ids to 0..59 by rank
    (see docs/dataset_notes.md, 'PASCAL Context').
    """
    src, dst = Path(src), Path(dst)
    root = find_dir(src, ["", "VOC2010", "VOCdevkit/VOC2010"], "JPEGImages", "the VOC2010 folder")
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
    if link_or_copy(root / "JPEGImages", dst / "JPEGImages", link_mode) in ("symlink", "copy"):
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
        for im in progress_bar(imgs, len(imgs), f"context {phase}", progress):
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
            save_png_atomic(convert_context_raw(canvas, source=sid), out)
            stats.written += 1
        if write_text_atomic("".join(f"{i}\n" for i in sorted(ids)),
                              dst / "ImageSets/SegmentationContext" / f"{phase}.txt"):
            stats.written += 1
    if "val" in phases:
        final_check(["context60"], dst)
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
    if link_or_copy(img_root, dst / "images" / split, link_mode) in ("symlink", "copy"):
        stats.linked += 1
    out_dir = dst / "annotations" / split
    raws = sorted(p for p in raw_root.glob("*.png") if "TrainIds" not in p.name and not p.name.endswith(".tmp.png"))
    suffixes = {"coco_stuff": "_labelTrainIds.png", "coco_object": "_instanceTrainIds.png"}
    for raw_path in progress_bar(raws, len(raws), f"coco {split}", progress):
        outs = {t: out_dir / f"{raw_path.stem}{suffixes[t]}" for t in targets}
        if all(o.is_file() for o in outs.values()):
            stats.skipped += 1
            continue
        stuff, obj = convert_coco_stuffthingmap(read_label(raw_path), source=str(raw_path))
        for t, out in outs.items():
            save_png_atomic(stuff if t == "coco_stuff" else obj, out)
        stats.written += 1
    if split == "val2017":
        final_check(list(targets), dst)
    return stats


def prepare_cityscapes(src: Path, dst: Path, split: str = "val", link_mode: str = "symlink",
                       progress: bool = True) -> PrepareStats:
    """Cityscapes ``*_gtFine_labelIds.png`` -> ``*_gtFine_labelTrainIds.png`` (per-pixel LUT).

    See docs/dataset_notes.md, 'Cityscapes'.
    """
    src, dst = Path(src), Path(dst)
    root = find_dir(src, ["", "cityscapes"], f"gtFine/{split}", "the Cityscapes folder (gtFine/, leftImg8bit/)")
    if not (root / "leftImg8bit" / split).is_dir():
        raise PreparationError(f"missing folder {root / 'leftImg8bit' / split} (extract leftImg8bit_trainvaltest.zip)")
    stats = PrepareStats()
    if link_or_copy(root / "leftImg8bit" / split, dst / "leftImg8bit" / split, link_mode) in ("symlink", "copy"):
        stats.linked += 1
    raws = sorted((root / "gtFine" / split).rglob("*_gtFine_labelIds.png"))
    if not raws:
        raise PreparationError(f"no *_gtFine_labelIds.png under {root / 'gtFine' / split}")
    for raw_path in progress_bar(raws, len(raws), f"cityscapes {split}", progress):
        rel = raw_path.relative_to(root / "gtFine" / split)
        out = dst / "gtFine" / split / rel.parent / raw_path.name.replace("_labelIds.png", "_labelTrainIds.png")
        if out.is_file():
            stats.skipped += 1
            continue
        save_png_atomic(convert_cityscapes_label_ids(read_label(raw_path)), out)
        stats.written += 1
    if split == "val":
        final_check(["cityscapes"], dst)
    return stats


# ADE-847 and PASCAL Context 459: the CAT-Seg / MaskFormer preparation scripts, transcribed.

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


def prepare_ade847(src: Path, dst: Path, link_mode: str = "symlink", progress: bool = True) -> PrepareStats:
    """ADE20K_2021_17_01 -> ``images_detectron2/validation`` (JPEG), ``annotations_detectron2/validation``
    (uint16 TIFF) and ``validation.txt`` at ``dst`` (CAT-Seg ``prepare_ade20k_full.py``, validation only).

    The validation images are found by walking ``src/images`` (the rule of the script's pickled index:
    file name ``*_val_*.jpg``), each with its ``<stem>_seg.png``.  ``link_mode`` is accepted for the
    common preparer interface (:data:`PREPARERS`): the images are written resized, nothing is linked.
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
    for path in progress_bar(images, len(images), "ade847 validation", progress):
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
        save_jpeg_atomic(image, out_img)
        save_tif16_atomic(label, out_lab)
        stats.written += 1
    if write_text_atomic("".join(f"{p.stem}\n" for p in images), dst / "validation.txt"):
        stats.written += 1
    final_check(["ade847"], dst)
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
    root = find_dir(src, ["", "VOC2010", "VOCdevkit/VOC2010"], "JPEGImages", "the VOC2010 folder")
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
    if link_or_copy(root / "JPEGImages", dst / "JPEGImages", link_mode) in ("symlink", "copy"):
        stats.linked += 1
    out_dir = dst / "annotations_detectron2" / "pc459_val"
    for sid in progress_bar(ids, len(ids), "context459 val", progress):
        out = out_dir / f"{sid}.tif"
        if out.is_file():
            stats.skipped += 1
            continue
        mat = mat_dir / f"{sid}.mat"
        save_tif16_atomic(convert_pc459(load_labelmap_mat(mat), source=str(mat)), out)
        stats.written += 1
    target = dst / "ImageSets/SegmentationContext/val.txt"
    if split != target:
        if target.is_file():
            theirs = [x.strip() for x in target.read_text().splitlines() if x.strip()]
            if sorted(theirs) != sorted(ids):
                raise PreparationError(f"{target} exists with other ids than {split}; remove one of them")
        elif write_text_atomic("".join(f"{i}\n" for i in ids), target):
            stats.written += 1
    final_check(["context459"], dst)
    return stats


#: Dataset key of ``scripts/prepare_data.py`` -> its preparer.  Every preparer is called as
#: ``preparer(src, dst, link_mode=..., progress=...)`` and returns :class:`PrepareStats`; ``context`` also
#: takes ``json_path`` (``--json``).  COCO-Stuff and COCO-Object come from the same maps: either key
#: converts both (one extra PNG write per image).
PREPARERS: dict[str, Callable[..., PrepareStats]] = {
    "voc": prepare_voc,
    "context": prepare_context,
    "coco_stuff": prepare_coco,
    "coco_object": prepare_coco,
    "cityscapes": prepare_cityscapes,
    "ade20k": prepare_ade20k,
    "ade847": prepare_ade847,
    "context459": prepare_context459,
}
