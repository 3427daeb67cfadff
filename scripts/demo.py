#!/usr/bin/env python
"""``python scripts/demo.py ...`` = ``proxyclip-demo ...``: see :mod:`proxyclip_pl.commands.demo`."""
from proxyclip_pl.commands.demo import cli

if __name__ == "__main__":
    cli()
