"""Prepare a benchmark from its official download.

    proxyclip-prepare {voc,context,coco_stuff,coco_object,cityscapes,ade20k,ade847,context459} \
        --src <extracted official download> --dst <dataset root> [--download] [--copy] [--no-progress]

``python scripts/prepare_data.py ...`` runs the same. See docs/datasets.md.  The preparers
are ``datamodules.prepare.PREPARERS``, the downloads ``datamodules.downloads``.  Errors (missing or
malformed raw data, failed download) print one ``error: ...`` line and exit with status 2.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from datamodules.downloads import fetch_official
from datamodules.prepare import PREPARERS
from proxyclip_pl.cli import run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="proxyclip-prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", choices=tuple(PREPARERS))
    p.add_argument("--src", required=True, type=Path, help="extracted official download (or where to put it)")
    p.add_argument("--dst", required=True, type=Path, help="dataset root read by build_datamodule")
    p.add_argument("--download", action="store_true", help="fetch the official archive(s) into --src first")
    p.add_argument("--json", type=Path, default=None, help="context: path to trainval_merged.json")
    p.add_argument("--copy", action="store_true", help="copy instead of symlinking unconverted folders")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    progress = not args.no_progress
    options = {"link_mode": "copy" if args.copy else "symlink", "progress": progress}
    if args.json is not None:
        if args.dataset != "context":
            raise ValueError(f"--json is the PASCAL Context annotation file (dataset 'context'), not an option of "
                             f"{args.dataset}")
        options["json_path"] = args.json
    if args.download:
        fetch_official(args.dataset, args.src, progress=progress)
    stats = PREPARERS[args.dataset](args.src, args.dst, **options)
    print(f"{args.dataset}: {stats}")
    return 0


def cli() -> None:
    """Console entry point ``proxyclip-prepare`` (and ``python scripts/prepare_data.py``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
