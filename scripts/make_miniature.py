#!/usr/bin/env python
"""Write miniature benchmarks (random images and labels) in the real on-disk layouts.

    python scripts/make_miniature.py --dst data/miniature --benchmarks voc21 cityscapes --num-images 5

Used by the README's first command and the tests, so the whole evaluation runs on a machine without
datasets or weights (with configs/tiny_*.json and random weights). The numbers mean nothing.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from datamodules import BENCHMARKS
from datamodules.synthetic import make_fake_benchmark


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dst", required=True, help="data folder; each benchmark goes to its standard sub-path")
    p.add_argument("--benchmarks", nargs="+", default=["voc21"], choices=sorted(BENCHMARKS) + ["all"])
    p.add_argument("--num-images", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    keys = sorted(BENCHMARKS) if "all" in args.benchmarks else args.benchmarks
    for key in keys:
        root = make_fake_benchmark(key, Path(args.dst), args.num_images, seed=args.seed)
        print(f"{key}: {args.num_images} images under {root}")


if __name__ == "__main__":
    main()
