"""Write miniature benchmarks (random images and labels) in the real on-disk layouts.

    proxyclip-miniature --dst data/miniature --benchmarks voc21 cityscapes --num-images 5

``python scripts/make_miniature.py ...`` runs the same. Used by the README's first command and the tests, so
the whole evaluation runs on a machine without datasets or weights (with configs/tiny_*.json and random
weights). The numbers mean nothing.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from datamodules.presets import BUILTIN_BENCHMARKS as BENCHMARKS  # generated in the built-in layouts only
from proxyclip_pl.cli import run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="proxyclip-miniature", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dst", required=True, help="data folder; each benchmark goes to its standard sub-path")
    p.add_argument("--benchmarks", nargs="+", default=["voc21"], choices=sorted(BENCHMARKS) + ["all"])
    p.add_argument("--num-images", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_images < 1:
        raise ValueError(f"--num-images must be at least 1, got {args.num_images}")
    from datamodules.synthetic import make_fake_benchmark  # here: --help needs no numpy / PIL

    keys = sorted(BENCHMARKS) if "all" in args.benchmarks else args.benchmarks
    for key in keys:
        root = make_fake_benchmark(key, Path(args.dst), args.num_images, seed=args.seed)
        print(f"{key}: {args.num_images} images under {root}")
    return 0


def cli() -> None:
    """Console entry point ``proxyclip-miniature`` (and ``python scripts/make_miniature.py``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
