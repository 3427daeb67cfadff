"""A leaderboard report of proxyclip-test runs: tables (CSV, Markdown, LaTeX), per-class IoU, diagnostics, plots.

    proxyclip-report RUN_DIR [RUN_DIR ...] --output-dir DIR

``python scripts/report.py ...`` runs the same. A RUN_DIR is an output folder of ``proxyclip-test``: it holds
``results.json`` (one benchmark) or sub-folders ``<key>/results.json`` (``--data all`` or a list). Each RUN_DIR is
one run, named by its folder's name. Only ``results.json`` and ``confusion.npy`` beside it are read.

Written into DIR (created if missing; files of the same names are overwritten):
  leaderboard.csv / .md / .tex  one row per run (mIoU per benchmark, avg of the eight Table-1 benchmarks,
                                images per second, peak memory, device), best avg first; a native-protocol run
                                of ProxyCLIP, SCLIP, NACLIP or ClearCLIP gets published and delta rows
  per_class.csv                 run, benchmark, class, iou (label order)
  diagnostics.csv               run, benchmark, classes, zero_iou_rate, never_predicted, pixel_acc
  pareto.png, per_class.png     average mIoU against images per second; per-class IoU heat maps
See docs/report.md for every column.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from proxyclip_pl.cli import run_cli

FILES = ("leaderboard.csv", "leaderboard.md", "leaderboard.tex", "per_class.csv", "diagnostics.csv",
         "pareto.png", "per_class.png")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="proxyclip-report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="proxyclip-test output folders")
    p.add_argument("--output-dir", type=Path, required=True, metavar="DIR", help="where the report is written")
    return p


def write_report(run_dirs: Sequence[Path], output_dir: Path) -> dict[str, str]:
    """Read and check every run, build every file in memory, then write them into ``output_dir``: a refused
    input (ValueError / FileNotFoundError) writes nothing. Returns the text files' contents."""
    from proxyclip_pl.report import build, load_runs
    from proxyclip_pl.report_plots import figures

    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"--output-dir {output_dir} is a file, not a folder")
    runs = load_runs(run_dirs)
    texts = build(runs)
    images = figures(runs)
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (output_dir / name).write_text(text, encoding="utf-8", newline="")
    for name, data in images.items():
        (output_dir / name).write_bytes(data)
    return texts


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    texts = write_report(args.run_dirs, args.output_dir)
    print(texts["leaderboard.md"], end="")
    print(f"report written to {args.output_dir}: {', '.join(FILES)}")
    return 0


def cli() -> None:
    """Console entry point ``proxyclip-report`` (and ``python scripts/report.py``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
