#!/usr/bin/env python
"""Per-class IoU differences between runs of scripts/test.py.

    python scripts/compare_results.py A/results.json B/results.json [C/results.json ...] [--top 15] [--out diff.png]

Every later run is compared with the first (B - A, C - A, ...) over the classes both report: the summary
line (mIoU of each), the classes sorted by difference (largest gains and losses first: ``--top`` of each)
and a PNG bar chart of the sorted differences (matplotlib when installed, else drawn with Pillow).
Classes whose IoU is undefined (null) in either run are listed apart.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence


def load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    try:
        res = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    if not isinstance(res, dict) or not isinstance(res.get("per_class_iou"), dict):
        raise ValueError(f"{path} has no per_class_iou: is it a scripts/test.py results.json?")
    return res


def differences(a: dict[str, Any], b: dict[str, Any]) -> tuple[list[tuple[str, float, float, float]], list[str]]:
    """[(class, iou_a, iou_b, b - a)] sorted by b - a (descending), and the classes undefined in a run."""
    rows, undefined = [], []
    for name, ia in a["per_class_iou"].items():
        ib = b["per_class_iou"].get(name)
        if name not in b["per_class_iou"]:
            continue
        if ia is None or ib is None:
            undefined.append(name)
            continue
        rows.append((name, float(ia), float(ib), round(float(ib) - float(ia), 2)))
    rows.sort(key=lambda r: (-r[3], r[0]))
    return rows, undefined


def label(path: Path, res: dict[str, Any]) -> str:
    cfg = res.get("config", {})
    return f"{path.parent.name or path.name} ({cfg.get('method', '?')}, {res.get('dataset', '?')})"


def report(paths: Sequence[Path], results: list[dict[str, Any]], top: int) -> tuple[str, list]:
    base = results[0]
    lines, series = [], []
    for path, res in zip(paths[1:], results[1:]):
        rows, undefined = differences(base, res)
        lines.append(f"== {label(path, res)} vs {label(paths[0], base)}: mIoU {res['mIoU']:.2f} vs {base['mIoU']:.2f} "
                     f"({res['mIoU'] - base['mIoU']:+.2f}); {len(rows)} classes compared ==")
        width = max([12] + [len(r[0]) for r in rows[:top] + rows[-top:]]) + 2
        lines.append(f"{'class':<{width}}{'A':>8}{'B':>8}{'B - A':>9}")
        shown = rows if len(rows) <= 2 * top else rows[:top] + [None] + rows[-top:]
        for r in shown:
            lines.append(f"{'...':<{width}}" if r is None else f"{r[0]:<{width}}{r[1]:8.2f}{r[2]:8.2f}{r[3]:+9.2f}")
        if undefined:
            lines.append(f"undefined IoU in a run (not compared): {', '.join(undefined[:20])}"
                         + (f" ... ({len(undefined) - 20} more)" if len(undefined) > 20 else ""))
        series.append((label(path, res), rows))
    return "\n".join(lines), series


def plot(series, out: Path, top: int) -> str:
    """Horizontal bars of the ``top`` gains and losses of each comparison; returns the backend used."""
    panels = []
    for name, rows in series:
        picked = rows if len(rows) <= 2 * top else rows[:top] + rows[-top:]
        panels.append((name, picked))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _plot_pillow(panels, out)
        return "pillow"
    height = max(3.0, 0.25 * max(len(p) for _, p in panels) + 1.5)
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), height), squeeze=False)
    for ax, (name, picked) in zip(axes[0], panels):
        names = [r[0] for r in picked][::-1]
        vals = [r[3] for r in picked][::-1]
        ax.barh(range(len(vals)), vals, color=["tab:green" if v >= 0 else "tab:red" for v in vals])
        ax.set_yticks(range(len(vals)), names, fontsize=7)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel("IoU difference (points)")
        ax.set_title(name, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return "matplotlib"


def _plot_pillow(panels, out: Path) -> None:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    row, label_w, bar_w, pad = 14, 220, 300, 10
    n = max(len(p) for _, p in panels)
    panel_w = label_w + 2 * bar_w + 2 * pad
    img = Image.new("RGB", (panel_w * len(panels), 30 + row * n + pad), "white")
    draw = ImageDraw.Draw(img)
    for k, (name, picked) in enumerate(panels):
        x0 = k * panel_w + pad
        draw.text((x0, 6), name[:80], fill="black", font=font)
        scale = max([abs(r[3]) for r in picked] + [1e-9])
        zero = x0 + label_w + bar_w
        draw.line([(zero, 24), (zero, 30 + row * n)], fill="black")
        for i, (cls, _a, _b, d) in enumerate(picked):
            y = 28 + i * row
            draw.text((x0, y), cls[:34], fill="black", font=font)
            length = int(round(abs(d) / scale * (bar_w - 40)))
            color = (40, 150, 60) if d >= 0 else (200, 50, 50)
            x1, x2 = (zero, zero + length) if d >= 0 else (zero - length, zero)
            draw.rectangle([x1, y + 2, max(x1, x2), y + row - 3], fill=color)
            draw.text((x2 + 3 if d >= 0 else x1 - 40, y), f"{d:+.2f}", fill="black", font=font)
    img.save(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", type=Path, help="results.json files; the first is the reference")
    p.add_argument("--top", type=int, default=15, help="classes shown at each end (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("compare_results.png"), help="PNG plot (default: %(default)s)")
    args = p.parse_args(argv)
    if len(args.results) < 2:
        p.error("give at least two results.json files")
    try:
        results = [load(path) for path in args.results]
        text, series = report(args.results, results, args.top)
        if not any(rows for _, rows in series):
            raise ValueError("the runs have no class with a defined IoU in common (different benchmarks?)")
        backend = plot(series, args.out, args.top)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text)
    print(f"plot written to {args.out} ({backend})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
