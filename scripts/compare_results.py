#!/usr/bin/env python
"""``python scripts/compare_results.py ...`` = ``proxyclip-compare ...``: see :mod:`proxyclip_pl.commands.compare`."""
from proxyclip_pl.commands.compare import cli

if __name__ == "__main__":
    cli()
