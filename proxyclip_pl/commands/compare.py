"""Per-class (and per-image) IoU differences between runs of proxyclip-test.

    proxyclip-compare A/results.json B/results.json [C/results.json ...] [--top 15] [--out diff.png]

``python scripts/compare_results.py ...`` runs the same; a run folder may be given instead of its
results.json. Every later run is compared with the first (B - A, C - A, ...) over the classes both report:
the summary line (mIoU of each), the classes sorted by difference (largest gains and losses first: ``--top``
of each) and a PNG bar chart of the sorted differences, titled "A vs B" with the runs' names (matplotlib
when installed, else drawn with Pillow; the title is also the PNG's ``Title`` text). Classes whose IoU is
undefined (null) in either run are listed apart.

Per image: when both run folders hold ``per_image.csv`` (``proxyclip-test --per-image``), the images of
both are written to ``<out stem>_per_image.csv`` (``..._per_image_C.csv`` etc. for a third run on) as
id, mIoU A, mIoU B, B - A sorted by B - A (largest gain first, undefined last), and the ``--top-images``
largest gains and losses are printed.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

from proxyclip_pl.cli import run_cli

#: One class of a comparison: (class name, IoU A, IoU B, B - A); IoUs in percent.
ClassRow = tuple[str, float, float, float]
#: One image of a comparison: (id, mIoU A, mIoU B, B - A); percent, NaN where undefined.
ImageRow = tuple[str, float, float, float]
X_LABEL = "IoU B - A (points)"
Y_LABEL = "class"


def results_path(path: Path) -> Path:
    """``path`` itself, or ``path/results.json`` when ``path`` is a run folder."""
    return path / "results.json" if path.is_dir() else path


def load(path: Path) -> dict[str, Any]:
    """A proxyclip-test results.json (FileNotFoundError / ValueError naming ``path`` otherwise)."""
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    try:
        res = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    if not isinstance(res, dict) or not isinstance(res.get("per_class_iou"), dict):
        raise ValueError(f"{path} has no per_class_iou: is it a proxyclip-test results.json?")
    return res


def differences(a: dict[str, Any], b: dict[str, Any]) -> tuple[list[ClassRow], list[str]]:
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


def run_names(paths: Sequence[Path]) -> list[str]:
    """A short distinct name per results file: its folder's name, with as many parent folders as it takes
    to tell the runs apart (``runA/voc21`` and ``runB/voc21`` rather than ``voc21`` twice)."""
    folders = [p.absolute().parent.parts for p in paths]
    for depth in range(1, max(len(f) for f in folders) + 1):
        names = ["/".join(f[-depth:]) for f in folders]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def label(name: str, res: dict[str, Any]) -> str:
    """``name (method, dataset)``."""
    cfg = res.get("config", {})
    return f"{name} ({cfg.get('method', '?')}, {res.get('dataset', '?')})"


def plot_title(label_a: str, label_b: str) -> str:
    """The title of one comparison's chart: both runs, the reference first."""
    return f"A: {label_a} vs B: {label_b}"


def report(paths: Sequence[Path], results: list[dict[str, Any]], top: int) -> tuple[str, list[tuple[str, list[ClassRow]]]]:
    """The printed per-class tables and, per later run, (chart title, its sorted class rows)."""
    labels = [label(n, r) for n, r in zip(run_names(paths), results)]
    base = results[0]
    lines, series = [], []
    for name, res in zip(labels[1:], results[1:]):
        rows, undefined = differences(base, res)
        lines.append(f"== {name} [B] vs {labels[0]} [A]: mIoU {res['mIoU']:.2f} vs {base['mIoU']:.2f} "
                     f"({res['mIoU'] - base['mIoU']:+.2f}); {len(rows)} classes compared ==")
        width = max([12] + [len(r[0]) for r in rows[:top] + rows[-top:]]) + 2
        lines.append(f"{'class':<{width}}{'A':>8}{'B':>8}{'B - A':>9}")
        shown = rows if len(rows) <= 2 * top else rows[:top] + [None] + rows[-top:]
        for r in shown:
            lines.append(f"{'...':<{width}}" if r is None else f"{r[0]:<{width}}{r[1]:8.2f}{r[2]:8.2f}{r[3]:+9.2f}")
        if undefined:
            lines.append(f"undefined IoU in a run (not compared): {', '.join(undefined[:20])}"
                         + (f" ... ({len(undefined) - 20} more)" if len(undefined) > 20 else ""))
        series.append((plot_title(labels[0], name), rows))
    return "\n".join(lines), series


def read_per_image(path: Path) -> dict[str, float]:
    """per_image.csv (proxyclip-test --per-image) -> {image id: mIoU in percent, NaN where undefined}."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"id", "miou"} <= set(reader.fieldnames):
            raise ValueError(f"{path} has no id and miou columns: is it a proxyclip-test --per-image file?")
        return {row["id"]: float(row["miou"] or "nan") for row in reader}


def per_image_differences(a: dict[str, float], b: dict[str, float]) -> list[ImageRow]:
    """[(id, miou_a, miou_b, b - a)] over the ids of both runs, sorted by b - a (descending; NaN last)."""
    rows = [(i, a[i], b[i], round(b[i] - a[i], 4)) for i in a if i in b]
    rows.sort(key=lambda r: (math.isnan(r[3]), -r[3] if not math.isnan(r[3]) else 0.0, r[0]))
    return rows


def write_per_image_table(rows: Sequence[ImageRow], out: Path) -> None:
    """CSV ``id,miou_a,miou_b,delta`` (percent, 4 decimals, ``nan`` where undefined) in the rows' order."""
    def fmt(v: float) -> str:
        return "nan" if math.isnan(v) else f"{v:.4f}"

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "miou_a", "miou_b", "delta"])
    for i, ma, mb, d in rows:
        writer.writerow([i, fmt(ma), fmt(mb), fmt(d)])
    out.write_text(buf.getvalue())


def per_image_report(paths: Sequence[Path], out: Path, top: int) -> str:
    """Per-image tables of every later run vs the first (written next to ``out``); the printed summary."""
    names = run_names(paths)
    csv_a = paths[0].parent / "per_image.csv"
    lines = []
    for k, (path, name) in enumerate(zip(paths[1:], names[1:])):
        csv_b = path.parent / "per_image.csv"
        missing = [str(p) for p in (csv_a, csv_b) if not p.is_file()]
        if missing:
            lines.append(f"per-image comparison of {name} skipped: no {' and no '.join(missing)} (proxyclip-test --per-image)")
            continue
        a, b = read_per_image(csv_a), read_per_image(csv_b)
        rows = per_image_differences(a, b)
        suffix = "" if len(paths) == 2 else f"_{chr(ord('B') + k)}"
        table = out.with_name(f"{out.stem}_per_image{suffix}.csv")
        write_per_image_table(rows, table)
        alone = len(set(a) ^ set(b))
        lines.append(f"== per image, {name} [B] vs {names[0]} [A]: {len(rows)} images compared"
                     + (f", {alone} in one run only" if alone else "") + f"; table written to {table} ==")
        defined = [r for r in rows if not math.isnan(r[3])]
        shown = defined if len(defined) <= 2 * top else defined[:top] + [None] + defined[-top:]
        width = max([12] + [len(r[0]) for r in defined[:top] + defined[-top:]]) + 2
        lines.append(f"{'image':<{width}}{'mIoU A':>8}{'mIoU B':>8}{'B - A':>9}")
        for r in shown:
            lines.append(f"{'...':<{width}}" if r is None else f"{r[0]:<{width}}{r[1]:8.2f}{r[2]:8.2f}{r[3]:+9.2f}")
    return "\n".join(lines)


def plot(series: Sequence[tuple[str, list[ClassRow]]], out: Path, top: int) -> str:
    """Horizontal bars of the ``top`` gains and losses of each comparison; returns the backend used."""
    panels = []
    for title, rows in series:
        picked = rows if len(rows) <= 2 * top else rows[:top] + rows[-top:]
        panels.append((title, picked))
    titles = "; ".join(title for title, _ in panels)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _plot_pillow(panels, out, titles)
        return "pillow"
    height = max(3.0, 0.25 * max(len(p) for _, p in panels) + 1.5)
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), height), squeeze=False)
    for ax, (title, picked) in zip(axes[0], panels):
        names = [r[0] for r in picked][::-1]
        vals = [r[3] for r in picked][::-1]
        ax.barh(range(len(vals)), vals, color=["tab:green" if v >= 0 else "tab:red" for v in vals])
        ax.set_yticks(range(len(vals)), names, fontsize=7)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel(X_LABEL)
        ax.set_ylabel(Y_LABEL)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120, metadata={"Title": titles})
    plt.close(fig)
    return "matplotlib"


def _plot_pillow(panels: Sequence[tuple[str, list[ClassRow]]], out: Path, titles: str) -> None:
    from PIL import Image, ImageDraw, ImageFont
    from PIL.PngImagePlugin import PngInfo

    font = ImageFont.load_default()
    row, label_w, bar_w, pad = 14, 220, 300, 10
    top_y = 3 * row + 4  # two title lines (A, B) and the y-axis label above the bars
    n = max(len(p) for _, p in panels)
    panel_w = label_w + 2 * bar_w + 2 * pad
    img = Image.new("RGB", (panel_w * len(panels), top_y + row * n + 2 * row + pad), "white")
    draw = ImageDraw.Draw(img)
    for k, (title, picked) in enumerate(panels):
        x0 = k * panel_w + pad
        # "A: ... vs B: ..." on two lines: one line of two run names outgrows the panel.
        a_part, _, b_part = title.partition(" vs ")
        draw.text((x0, 4), a_part[:120], fill="black", font=font)
        draw.text((x0, 4 + row), ("vs " + b_part)[:120], fill="black", font=font)
        draw.text((x0, 4 + 2 * row), Y_LABEL, fill=(90, 90, 90), font=font)
        scale = max([abs(r[3]) for r in picked] + [1e-9])
        zero = x0 + label_w + bar_w
        bottom = top_y + row * n
        draw.line([(zero, top_y - 4), (zero, bottom)], fill="black")
        for i, (cls, _a, _b, d) in enumerate(picked):
            y = top_y + i * row
            draw.text((x0, y), cls[:34], fill="black", font=font)
            length = int(round(abs(d) / scale * (bar_w - 40)))
            color = (40, 150, 60) if d >= 0 else (200, 50, 50)
            x1, x2 = (zero, zero + length) if d >= 0 else (zero - length, zero)
            draw.rectangle([x1, y + 2, max(x1, x2), y + row - 3], fill=color)
            draw.text((x2 + 3 if d >= 0 else x1 - 40, y), f"{d:+.2f}", fill="black", font=font)
        draw.text((zero - font.getlength(X_LABEL) / 2, bottom + row // 2), X_LABEL, fill=(90, 90, 90), font=font)
    info = PngInfo()
    info.add_text("Title", titles)
    img.save(out, pnginfo=info)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="proxyclip-compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", type=Path, help="results.json files (or run folders); the first is the reference")
    p.add_argument("--top", type=int, default=15, help="classes shown at each end (default: %(default)s)")
    p.add_argument("--top-images", type=int, default=5, help="images shown at each end (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("compare_results.png"), help="PNG plot (default: %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if len(args.results) < 2:
        p.error("give at least two results.json files")
    if args.top < 1 or args.top_images < 1:
        raise ValueError(f"--top and --top-images must be at least 1, got {args.top} and {args.top_images}")
    paths = [results_path(path) for path in args.results]
    results = [load(path) for path in paths]
    text, series = report(paths, results, args.top)
    if not any(rows for _, rows in series):
        raise ValueError("the runs have no class with a defined IoU in common (different benchmarks?)")
    backend = plot(series, args.out, args.top)
    print(text)
    print(f"plot written to {args.out} ({backend})")
    per_image = per_image_report(paths, args.out, args.top_images)
    if per_image:
        print(per_image)
    return 0


def cli() -> None:
    """Console entry point ``proxyclip-compare`` (and ``python scripts/compare_results.py``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
