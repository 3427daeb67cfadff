#!/usr/bin/env python
"""``python scripts/segment.py ...`` = ``proxyclip-segment ...``: see :mod:`proxyclip_pl.commands.segment`."""
from proxyclip_pl.commands.segment import cli

if __name__ == "__main__":
    cli()
