#!/usr/bin/env python
"""``python scripts/benchmark.py ...`` = ``proxyclip-benchmark ...``: see :mod:`proxyclip_pl.commands.benchmark`."""
from proxyclip_pl.commands.benchmark import cli

if __name__ == "__main__":
    cli()
