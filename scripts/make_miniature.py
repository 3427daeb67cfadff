#!/usr/bin/env python
"""``python scripts/make_miniature.py ...`` = ``proxyclip-miniature ...``: see :mod:`proxyclip_pl.commands.miniature`."""
from proxyclip_pl.commands.miniature import cli

if __name__ == "__main__":
    cli()
