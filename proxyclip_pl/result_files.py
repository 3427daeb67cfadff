"""A run's files and printed tables: per_image.csv, atomic JSON, the metrics file rank 0 writes, the per-class
table, the images-per-second bar."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar




def write_per_image_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """per_image.csv: id, pixels scored, pixel accuracy %, per-image mIoU %, GT class ids (space separated)."""
    def fmt(v: float) -> str:
        return "nan" if v != v else f"{v:.4f}"

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "pixels", "pixel_acc", "miou", "classes"])
    for r in rows:
        writer.writerow([r["id"], r["pixels"], fmt(r["pixel_acc"]), fmt(r["miou"]), r["classes"]])
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON so that a reader never sees a partial file (temporary file + rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def read_results(path: Path) -> dict[str, Any]:
    """The metrics written by :class:`SegmenterEvaluator` (``results_file``) in the caller's process."""
    if not path.is_file():
        raise RuntimeError(f"the evaluation finished without writing its results to {path}")
    return json.loads(path.read_text())


class ImagesPerSecondBar(TQDMProgressBar):
    """Progress bar counting images (batch size is one image per step)."""

    def init_test_tqdm(self):
        bar = super().init_test_tqdm()
        bar.unit = "img"
        return bar


def format_results_table(results: dict[str, Any], title: str = "") -> str:
    """Readable per-class IoU / Acc table plus the summary line."""
    names = list(results["per_class_iou"])
    width = max(12, *(len(n) for n in names)) + 2
    lines = [title] if title else []
    lines.append(f"{'class':<{width}}{'IoU':>8}{'Acc':>8}")

    def fmt(v: float | None) -> str:
        return f"{v:8.2f}" if v is not None else f"{'nan':>8}"

    for name in names:
        iou, acc = results["per_class_iou"][name], results["per_class_acc"][name]
        lines.append(f"{name:<{width}}{fmt(iou)}{fmt(acc)}")
    lines.append(f"mIoU {results['mIoU']:.2f}  mAcc {results['mAcc']:.2f}  aAcc {results['aAcc']:.2f}  "
                 f"({results['num_images']} images)")
    return "\n".join(lines)
