#!/usr/bin/env python
"""``python scripts/analyze.py ...`` = ``proxyclip-analyze ...``: see :mod:`proxyclip_pl.commands.analyze`."""
from proxyclip_pl.commands.analyze import cli

if __name__ == "__main__":
    cli()
