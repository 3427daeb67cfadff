#!/usr/bin/env python
"""``python scripts/test.py ...`` = ``proxyclip-test ...``: see :mod:`proxyclip_pl.commands.evaluate`."""
from proxyclip_pl.commands.evaluate import cli

if __name__ == "__main__":
    cli()
