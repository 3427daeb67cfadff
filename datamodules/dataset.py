"""Map-style test dataset over one benchmark's standard layout.

A sample is a dict::

    image     uint8 RGB tensor [3, h, w] after the test resize (EXIF orientation applied)
    label     int64 tensor [H0, W0] at original resolution, values in [0, C) or 255
    id        str, file stem without the benchmark's suffix
    ori_size  (H0, W0)
    index     int, position in the dataset (used by the metric's uniqueness check)
    path      str, image path
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .io import DataFileError, read_image, read_label
from .presets import BenchmarkPreset
from .transforms import IGNORE_INDEX, build_test_transform, label_lut


class DatasetLayoutError(FileNotFoundError):
    """The benchmark's folder layout is missing or malformed; the message says how to fix it."""

    #: True for the report of several problems (:func:`problems_error`): one summary line, then one line per
    #: kind of problem. Command-line wrappers print such a message as it is instead of joining its lines.
    multiline: bool = False


def _layout_error(preset: BenchmarkPreset, root: Path, what: str) -> DatasetLayoutError:
    if preset.is_custom:
        return DatasetLayoutError(f"[{preset.key}] {what}\n  data_root: {root}\n  {preset.prepare_command}")
    return DatasetLayoutError(
        f"[{preset.key}] {what}\n  data_root: {root}\n"
        f"  Prepare the dataset with:\n    {preset.prepare_command}\n"
        f"  (official download: {preset.download_hint}; see the Datasets section of README.md)"
    )


def _problem_line(kind: str, items: Sequence[str], max_listed: int) -> str:
    """``  - <kind> (<count>): <first items>; ... and N more``: one kind of problem on one line."""
    shown = "; ".join(items[:max_listed])
    more = f"; ... and {len(items) - max_listed} more" if len(items) > max_listed else ""
    return f"  - {kind} ({len(items)}): {shown}{more}"


def problems_error(preset: BenchmarkPreset, root: Path, problems: Mapping[str, Sequence[str]],
                   max_listed: int = 5) -> DatasetLayoutError:
    """One :class:`DatasetLayoutError` for every problem found in the samples, one line per kind.

    Args:
        problems: kind of problem (``missing label``, ``size mismatch``, ...) -> one description per file, each
            naming the file; kinds without items are left out.
        max_listed: descriptions shown per kind (the rest are counted).
    Returns:
        An error whose message reads::

            voc21: 3 problems under <root>:
              - missing image (1): <path>
              - missing label (2): <path>; <path>
              <how to fix>
    """
    found = {kind: list(items) for kind, items in problems.items() if items}
    total = sum(len(items) for items in found.values())
    fix = ("fix or replace these files, or correct the dataset's data_root / img_dir / ann_dir / img_suffix / "
           "seg_suffix / split_file" if preset.is_custom else
           f"prepare the dataset with: {preset.prepare_command} (official download: {preset.download_hint})")
    lines = [f"{preset.key}: {total} problem{'' if total == 1 else 's'} under {root}:",
             *(_problem_line(kind, items, max_listed) for kind, items in found.items()),
             f"  {fix}"]
    error = DatasetLayoutError("\n".join(lines))
    error.multiline = True
    return error


def missing_files(samples: Sequence[tuple[str, Path, Path]]) -> dict[str, list[str]]:
    """``missing image`` / ``missing label`` -> the paths of the samples' files that do not exist."""
    return {"missing image": [str(img) for _sid, img, _ann in samples if not img.is_file()],
            "missing label": [str(ann) for _sid, _img, ann in samples if not ann.is_file()]}


def build_sample_list(preset: BenchmarkPreset, root: Path) -> list[tuple[str, Path, Path]]:
    """(id, image path, label path) in protocol order; checks folders and the split file only.

    With a split file: its line order.  Otherwise: the image folder listed recursively,
    files ending with the image suffix and not starting with '.', sorted by full path string.
    """
    root = Path(root)
    if not root.is_dir():
        raise _layout_error(preset, root, f"data root does not exist: {root}")
    img_dir, ann_dir = root / preset.img_dir, root / preset.ann_dir
    for d in (img_dir, ann_dir):
        if not d.is_dir():
            raise _layout_error(preset, root, f"missing folder: {d}")
    samples: list[tuple[str, Path, Path]] = []
    if preset.split_file is not None:
        split = root / preset.split_file
        if not split.is_file():
            raise _layout_error(preset, root, f"missing split file: {split}")
        for lineno, line in enumerate(split.read_text().splitlines(), 1):
            sid = line.strip()
            if not sid:
                continue
            if any(c.isspace() for c in sid) or "/" in sid:
                raise _layout_error(preset, root, f"malformed line {lineno} in split file {split}: {line!r}")
            samples.append((sid, img_dir / f"{sid}{preset.img_suffix}", ann_dir / f"{sid}{preset.seg_suffix}"))
    else:
        paths = []
        for dirpath, _dirs, files in os.walk(img_dir, followlinks=True):
            for name in files:
                # Hidden files (macOS AppleDouble '._x.jpg', ...) are skipped, as mmengine's scandir does;
                # hidden folders are still walked, as there.
                if name.endswith(preset.img_suffix) and not name.startswith("."):
                    paths.append(os.path.join(dirpath, name))
        for p in sorted(paths):
            rel = os.path.relpath(p, img_dir)[: -len(preset.img_suffix)]
            samples.append((os.path.basename(rel), Path(p), ann_dir / f"{rel}{preset.seg_suffix}"))
    return samples


class SegmentationTestDataset(Dataset):
    """Test split of one benchmark; see the module docstring for the sample format."""

    def __init__(self, preset: BenchmarkPreset, root: str | os.PathLike,
                 transform: Callable[..., dict] | None = None,
                 samples: list[tuple[str, Path, Path]] | None = None) -> None:
        self.preset = preset
        self.root = Path(root)
        self.samples = samples if samples is not None else build_sample_list(preset, self.root)
        self.transform = transform if transform is not None else build_test_transform(preset.short_side)
        self._lut = label_lut(preset.reduce_zero_label, preset.label_bits)
        # valid[v] says whether transformed value v may appear: [0, C) ∪ {ignore_index} ∪ extra values.
        size = 1 << preset.label_bits
        self._valid = np.zeros(size, dtype=bool)
        self._valid[: preset.num_classes] = True
        reduce_out = (IGNORE_INDEX,) if preset.reduce_zero_label else ()
        for v in (preset.ignore_index, *reduce_out, *preset.extra_label_values):
            if 0 <= v < size:
                self._valid[v] = True
        self._warned_ignore = False

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def ids(self) -> list[str]:
        return [s[0] for s in self.samples]

    def load_label(self, index: int) -> np.ndarray:
        """Transformed label (H0, W0) of sample ``index`` (uint8, or uint16 for 16-bit presets), validated
        against [0, C) ∪ {255, ignore_index} ∪ the preset's extra values."""
        _sid, _img, ann = self.samples[index]
        label = self._lut[read_label(ann, max_value=self.preset.max_label_value)]
        counts = np.bincount(label.ravel(), minlength=self._valid.size)
        present = counts > 0
        bad = np.flatnonzero(present & ~self._valid)
        if bad.size:
            allowed = sorted(int(v) for v in np.flatnonzero(self._valid) if v >= self.preset.num_classes)
            shown = bad.tolist()[:20]
            raise DataFileError(
                f"label file {ann} has values {shown}{' ...' if bad.size > 20 else ''} outside "
                f"[0, {self.preset.num_classes}) ∪ {set(allowed)} "
                f"after the {self.preset.key} label transform; was it converted with "
                f"`{self.preset.prepare_command}`?"
            )
        ign = self.preset.ignore_index
        if 0 <= ign < present.size and present[ign] and not self.preset.has_ignore and not self._warned_ignore:
            self._warned_ignore = True
            warnings.warn(f"label file {ann} contains {ign}, which {self.preset.key} never uses "
                          "(it has no ignore pixels); check the conversion.", stacklevel=2)
        return label

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.samples):
            raise IndexError(index)
        sid, img_path, _ann = self.samples[index]
        image = read_image(img_path)
        label = self.load_label(index)
        if image.shape[:2] != label.shape:
            raise DataFileError(
                f"image {img_path} is {image.shape[1]}x{image.shape[0]} (after EXIF orientation) but its "
                f"label {_ann} is {label.shape[1]}x{label.shape[0]}"
            )
        ori_size = (int(label.shape[0]), int(label.shape[1]))
        image = self.transform(image=image)["image"]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "label": torch.from_numpy(label.astype(np.int64)),
            "id": sid,
            "ori_size": ori_size,
            "index": index,
            "path": str(img_path),
        }


def list_collate(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep a batch as the list of sample dicts (images differ in size)."""
    return list(batch)
