"""Miniature benchmark datasets in the real on-disk layouts (tests, demos; no network).

``make_fake_benchmark(key, root, num_images)`` writes ``num_images`` samples under
``root/<standard sub-path>`` and returns that data root.  Labels are random but every
file also contains a fixed strip of "probe" values covering the benchmark's on-disk
encoding (including 0 and 255 where they occur), so label transforms can be checked
exactly.  Images are smooth RGB gradients (JPEG or PNG as the benchmark uses).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.label_tables import COCO_USED_RAW, coco_object_lut, coco_stuff_lut
from datamodules.presets import BENCHMARKS

DEFAULT_SIZES = ((375, 500), (333, 500), (500, 375), (64, 96))
CITIES = ("frankfurt", "lindau", "munster")

#: Values each benchmark's on-disk label files may contain.
ON_DISK_VALUES = {
    "voc21": list(range(21)) + [255], "voc20": list(range(21)) + [255],
    "context60": list(range(60)), "context59": list(range(60)),
    "coco_stuff": list(range(171)) + [255], "coco_object": list(range(81)),
    "cityscapes": list(range(19)) + [255], "ade20k": list(range(151)),
    # 16-bit TIFF benchmarks: train ids 0..C-1 (255 is a real class) and 65535 = unlabeled.
    "ade847": list(range(847)) + [65535], "context459": list(range(459)) + [65535],
}


def voc_palette() -> list[int]:
    """The standard PASCAL VOC colour map (768 ints)."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def random_image(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 128, size=3)
    img = np.stack([(yy * 255 // max(h - 1, 1) + base[0]) % 256, (xx * 255 // max(w - 1, 1) + base[1]) % 256,
                    ((xx + yy) + base[2]) % 256], axis=-1)
    return img.astype(np.uint8)


def random_label(h: int, w: int, values: list[int], rng: np.random.Generator) -> np.ndarray:
    """Random map over ``values``; the first row starts with every value once (probe strip)."""
    dtype = np.uint8 if max(values) <= 255 else np.uint16
    lab = rng.choice(np.asarray(values, dtype=dtype), size=(h, w))
    flat = lab.reshape(-1)
    n = min(len(values), flat.size)
    flat[:n] = np.asarray(values[:n], dtype=dtype)
    return lab


def save_label16(arr: np.ndarray, path: Path) -> None:
    """uint16 (H, W) label map as written by the CAT-Seg preparation (``Image.fromarray(uint16)``: 'I;16')."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint16)).save(path)


def unlabeled_block(lab: np.ndarray, rng: np.random.Generator, value: int = 65535) -> np.ndarray:
    """Mark a random rectangle (about a quarter of the image, below the probe row) as unlabeled."""
    h, w = lab.shape
    if h > 2:
        y0 = int(rng.integers(1, max(2, h // 2)))
        x0 = int(rng.integers(0, max(1, w // 2)))
        lab[y0:y0 + h // 2, x0:x0 + w // 2] = value
    return lab


def save_label(arr: np.ndarray, path: Path, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    if palette:  # VOC style: indices + colour palette
        im = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.tobytes())
        im.putpalette(voc_palette())
    else:
        im = Image.fromarray(arr)  # 2-D uint8 -> mode 'L'
    im.save(path)


def save_image(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        Image.fromarray(arr).save(path, quality=95)
    else:
        Image.fromarray(arr).save(path)


def make_fake_benchmark(key: str, root: Path, num_images: int, sizes=DEFAULT_SIZES, seed: int = 0) -> Path:
    """Write a miniature ``key`` dataset under ``root``; return its data root.

    Split files list ids in a deliberately *unsorted* order; VOC also gets train-only
    files that must be ignored.  ``sizes`` are (H, W) pairs used cyclically.
    """
    p = BENCHMARKS[key]
    rng = np.random.default_rng(seed)
    data_root = Path(root) / p.sub_path
    data_root.mkdir(parents=True, exist_ok=True)
    values = ON_DISK_VALUES[key]

    def size_of(i: int) -> tuple[int, int]:
        return tuple(sizes[i % len(sizes)])

    if key in ("voc21", "voc20", "context60", "context59"):
        year = 2007 if p.sub_path.endswith("2012") else 2008
        ids = [f"{year}_{i:06d}" for i in range(num_images)]
        order = list(rng.permutation(num_images)) if num_images > 2 else list(range(num_images))[::-1]
        for i, sid in enumerate(ids):
            h, w = size_of(i)
            save_image(random_image(h, w, rng), data_root / p.img_dir / f"{sid}.jpg")
            save_label(random_label(h, w, values, rng), data_root / p.ann_dir / f"{sid}.png",
                       palette=key.startswith("voc"))
        split = data_root / p.split_file
        split.parent.mkdir(parents=True, exist_ok=True)
        split.write_text("".join(f"{ids[j]}\n" for j in order))
        # A training sample (not in the val split) that must not show up.
        extra = f"{year}_999999"
        save_image(random_image(32, 32, rng), data_root / p.img_dir / f"{extra}.jpg")
        save_label(random_label(32, 32, values, rng), data_root / p.ann_dir / f"{extra}.png")
        (split.parent / "train.txt").write_text(f"{extra}\n")
    elif key in ("coco_stuff", "coco_object"):
        stuff_lut, obj_lut = coco_stuff_lut(), coco_object_lut()
        raw_values = list(COCO_USED_RAW) + [255]
        for i in range(num_images):
            sid = f"{(i * 7919 + 139) % 10**12:012d}"
            h, w = size_of(i)
            save_image(random_image(h, w, rng), data_root / p.img_dir / f"{sid}.jpg")
            raw = random_label(h, w, raw_values, rng)
            ann = data_root / p.ann_dir
            save_label(raw, ann / f"{sid}.png")
            save_label(stuff_lut[raw], ann / f"{sid}_labelTrainIds.png")
            save_label(obj_lut[raw], ann / f"{sid}_instanceTrainIds.png")
    elif key == "cityscapes":
        for i in range(num_images):
            city = CITIES[i % len(CITIES)]
            stem = f"{city}_{i:06d}_{(i * 19) % 1000:06d}"
            h, w = size_of(i)
            save_image(random_image(h, w, rng), data_root / p.img_dir / city / f"{stem}_leftImg8bit.png")
            save_label(random_label(h, w, values, rng),
                       data_root / p.ann_dir / city / f"{stem}_gtFine_labelTrainIds.png")
    elif key == "ade20k":
        for i in range(num_images):
            sid = f"ADE_val_{i + 1:08d}"
            h, w = size_of(i)
            save_image(random_image(h, w, rng), data_root / p.img_dir / f"{sid}.jpg")
            save_label(random_label(h, w, values, rng), data_root / p.ann_dir / f"{sid}.png")
    elif key in ("ade847", "context459"):
        if key == "ade847":
            ids = [f"ADE_val_{i + 1:08d}" for i in range(num_images)]
        else:
            ids = [f"2008_{i:06d}" for i in range(num_images)]
        order = list(rng.permutation(num_images)) if num_images > 2 else list(range(num_images))[::-1]
        for i, sid in enumerate(ids):
            h, w = size_of(i)
            save_image(random_image(h, w, rng), data_root / p.img_dir / f"{sid}.jpg")
            lab = unlabeled_block(random_label(h, w, values, rng), rng)
            save_label16(lab, data_root / p.ann_dir / f"{sid}{p.seg_suffix}")
        split = data_root / p.split_file
        split.parent.mkdir(parents=True, exist_ok=True)
        split.write_text("".join(f"{ids[j]}\n" for j in order))
    else:  # pragma: no cover
        raise KeyError(key)
    return data_root
