#!/usr/bin/env python
"""``python scripts/prepare_data.py ...`` = ``proxyclip-prepare ...``: see :mod:`proxyclip_pl.commands.prepare`."""
from proxyclip_pl.commands.prepare import cli

if __name__ == "__main__":
    cli()
