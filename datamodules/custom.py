"""Any user dataset: a preset built from keyword arguments or from a JSON dataset card.

    dm = build_datamodule("custom", data_root="data/mine", classes=["road", ["car", "vehicle"]],
                          img_dir="images", ann_dir="labels", img_suffix=".jpg", seg_suffix=".png")
    dm = build_datamodule("data/mine/dataset.json")   # the same, from a card

A card is a JSON object whose keys are exactly :data:`CARD_KEYS` (``data_root`` relative to the card's
folder unless absolute; ``classes`` a list whose entries are a name or a list of synonyms, or the path
of a vocabulary file).  Label maps: palette / grey PNG, or 16-bit PNG / TIFF.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from .io import DataFileError, decoder_reason, image_size
from .presets import BenchmarkPreset

#: Keyword arguments of :func:`custom_preset` (and the keys a dataset card may hold, plus ``data_root``).
CARD_KEYS = ("data_root", "classes", "img_dir", "ann_dir", "img_suffix", "seg_suffix", "split_file",
             "reduce_zero_label", "ignore_index", "background", "short_side", "crop_size", "stride",
             "prob_thd", "label_bits", "name")
_REQUIRED = ("data_root", "classes", "img_dir", "ann_dir")
SYNONYM_SEPARATOR = "; "


class DatasetCardError(ValueError):
    """A dataset card or custom-dataset argument is invalid; the message names the card / argument."""


def _parse_vocab_text(text: str, source: str) -> list[list[str]]:
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    vocab = []
    for n, line in enumerate(lines, 1):
        names = [x.strip() for x in line.split(SYNONYM_SEPARATOR)]
        if not line.strip() or not all(names):
            raise DatasetCardError(f"{source} line {n} is empty or has an empty synonym: {line!r}")
        vocab.append(names)
    return vocab


def normalize_classes(classes: Any, source: str = "classes", base: Path | None = None) -> tuple[tuple[str, ...], ...]:
    """``classes`` (a vocabulary file path, or a list of names / synonym lists) -> tuple of synonym tuples."""
    if isinstance(classes, (str, os.PathLike)):
        path = Path(classes)
        if base is not None and not path.is_absolute():
            path = base / path
        if not path.is_file():
            raise DatasetCardError(f"{source}: vocabulary file not found: {path}")
        vocab = _parse_vocab_text(path.read_text(encoding="utf-8"), f"vocabulary file {path}")
    elif isinstance(classes, Sequence) and len(classes) > 0:
        vocab = []
        for c, entry in enumerate(classes):
            names = [entry] if isinstance(entry, str) else entry
            if (not isinstance(names, Sequence) or isinstance(names, str) or not names
                    or not all(isinstance(n, str) and n.strip() for n in names)):
                raise DatasetCardError(f"{source}[{c}] must be a non-empty name or a list of non-empty names, "
                                       f"got {entry!r}")
            vocab.append([n.strip() for n in names])
    else:
        raise DatasetCardError(f"{source} must be a vocabulary file or a non-empty list of class names, got {classes!r}")
    firsts = [v[0] for v in vocab]
    dup = sorted({n for n in firsts if firsts.count(n) > 1})
    if dup:
        raise DatasetCardError(f"{source}: class names must be unique (they key the per-class results); repeated: {dup}")
    return tuple(tuple(v) for v in vocab)


def custom_preset(classes: Any, img_dir: str, ann_dir: str, img_suffix: str = ".jpg", seg_suffix: str = ".png",
                  split_file: str | None = None, reduce_zero_label: bool = False, ignore_index: int = 255,
                  background: bool | None = None, short_side: int = 448, crop_size: int = 336, stride: int = 112,
                  prob_thd: float = 0.0, label_bits: int | None = None, name: str = "custom",
                  _base: Path | None = None, _source: str = "classes") -> BenchmarkPreset:
    """A frozen :class:`BenchmarkPreset` for a user dataset (see the module docstring).

    ``label_bits`` (8 or 16) defaults to 16 when a class id or ``ignore_index`` exceeds 255; 8-bit presets
    still read 16-bit files whose values fit in 0..255. ``background`` (None = False): class 0 is a scored
    background class (``prob_thd`` sends unsure pixels there). The sample count is whatever is found.
    """
    vocab = normalize_classes(classes, _source, _base)
    for key, value in (("img_dir", img_dir), ("ann_dir", ann_dir), ("img_suffix", img_suffix),
                       ("seg_suffix", seg_suffix)):
        if not isinstance(value, str):
            raise DatasetCardError(f"{key} must be a string, got {value!r}")
    if not isinstance(ignore_index, int) or not 0 <= ignore_index <= 65535:
        raise DatasetCardError(f"ignore_index must be an integer in 0..65535, got {ignore_index!r}")
    if 0 <= ignore_index < len(vocab):
        raise DatasetCardError(f"ignore_index {ignore_index} is a class id (there are {len(vocab)} classes); "
                               "use a value >= the number of classes, e.g. 255")
    if label_bits is None:
        label_bits = 16 if max(len(vocab) - 1, ignore_index) > 255 else 8
    if label_bits not in (8, 16):
        raise DatasetCardError(f"label_bits must be 8 or 16, got {label_bits!r}")
    if label_bits == 8 and (len(vocab) > 256 or ignore_index > 255):
        raise DatasetCardError("label_bits 8 cannot hold more than 256 classes or an ignore_index above 255")
    return BenchmarkPreset(
        key=name, class_names=tuple(v[0] for v in vocab), sub_path="", img_dir=img_dir, ann_dir=ann_dir,
        img_suffix=img_suffix, seg_suffix=seg_suffix, split_file=split_file,
        reduce_zero_label=bool(reduce_zero_label), expected_num_images=0, short_side=int(short_side),
        crop_size=int(crop_size), stride=int(stride), prob_thd=float(prob_thd), background=bool(background),
        has_ignore=True, prepare_key="", download_hint="", ignore_index=ignore_index, label_bits=label_bits,
        vocabulary=vocab,
    )


def card_preset(spec: dict[str, Any]) -> tuple[BenchmarkPreset, Path]:
    """A user dataset's preset and data root from card keys (:func:`read_card`'s result or keyword arguments).
    Checks the keys only (no file is read; torch-free), raising ``TypeError`` for unknown options and
    :class:`DatasetCardError` for a missing required key."""
    unknown = sorted(set(spec) - set(CARD_KEYS) - {"_base", "_source"})
    if unknown:
        raise TypeError(f"unknown option(s) for a custom dataset: {unknown}; accepted: {list(CARD_KEYS)}")
    for key in _REQUIRED:
        if spec.get(key) is None:
            raise DatasetCardError(f"a custom dataset needs {key}=...")
    spec = dict(spec)
    root = Path(spec.pop("data_root"))
    return custom_preset(**spec), root


def read_card(card: str | os.PathLike) -> dict[str, Any]:
    """Keyword arguments of ``build_datamodule("custom", ...)`` from a JSON dataset card."""
    card = Path(card)
    if not card.is_file():
        raise DatasetCardError(f"dataset card not found: {card}")
    try:
        spec = json.loads(card.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetCardError(f"dataset card {card} is not valid JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise DatasetCardError(f"dataset card {card} must hold a JSON object")
    unknown = sorted(set(spec) - set(CARD_KEYS))
    if unknown:
        raise DatasetCardError(f"dataset card {card}: unknown key(s) {unknown}; accepted: {list(CARD_KEYS)}")
    missing = [k for k in _REQUIRED if k not in spec]
    if missing:
        raise DatasetCardError(f"dataset card {card}: missing key(s) {missing}")
    root = Path(spec["data_root"])
    spec["data_root"] = root if root.is_absolute() else card.resolve().parent / root
    spec.setdefault("name", card.stem)
    spec["_base"] = card.resolve().parent
    spec["_source"] = f"dataset card {card}: classes"
    return spec


#: Kinds of problem :func:`sample_problems` reports, in the order of the report's lines.
PROBLEM_KINDS = ("missing image", "missing label", "unreadable image", "unreadable label", "size mismatch",
                 "label values")


def _label_problem(dataset, index: int) -> tuple[str, str] | tuple[None, Any]:
    """(kind, description) of sample ``index``'s label if it cannot be used, else (None, the label)."""
    ann = dataset.samples[index][2]
    try:
        return None, dataset.load_label(index)
    except DataFileError as exc:
        if exc.__cause__ is not None:  # PIL failed: the decoder's reason says why
            return "unreadable label", f"{ann} ({decoder_reason(exc)})"
        # Values or mode; the preparation hint of the benchmarks does not apply to a user dataset.
        return "label values", str(exc).split("; was it converted")[0]


def sample_problems(dataset) -> dict[str, list[str]]:
    """Problems of a custom dataset's samples, every image and label decoded once.

    Returns:
        kind (:data:`PROBLEM_KINDS`) -> one description per sample, naming its file(s); an unreadable file's
        description holds the decoder's reason (exception type and message).
    """
    from .dataset import missing_files  # here: reading a card (this module) must not import torch

    kinds: dict[str, list[str]] = {kind: [] for kind in PROBLEM_KINDS}
    for kind, paths in missing_files(dataset.samples).items():
        kinds[kind].extend(paths)
    for i, (_sid, img, ann) in enumerate(dataset.samples):
        if not (img.is_file() and ann.is_file()):
            continue  # listed above
        try:
            size = image_size(img)
        except DataFileError as exc:
            kinds["unreadable image"].append(f"{img} ({decoder_reason(exc)})")
            continue
        kind, found = _label_problem(dataset, i)
        if kind is not None:
            kinds[kind].append(found)
        elif tuple(found.shape) != size:
            kinds["size mismatch"].append(f"image {img} is {size[1]}x{size[0]} but label {ann} is "
                                          f"{found.shape[1]}x{found.shape[0]}")
    return kinds


def check_samples(dataset, max_listed: int = 5) -> list[str]:
    """:func:`sample_problems` as ``"<kind>: <description>"`` lines, at most ``max_listed`` per kind."""
    lines = []
    for kind, items in sample_problems(dataset).items():
        lines += [f"{kind}: {item}" for item in items[:max_listed]]
        if len(items) > max_listed:
            lines.append(f"{kind}: ... and {len(items) - max_listed} more")
    return lines


__all__ = ["CARD_KEYS", "DatasetCardError", "custom_preset", "read_card", "normalize_classes", "check_samples",
           "sample_problems", "PROBLEM_KINDS"]
