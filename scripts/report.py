#!/usr/bin/env python
"""``python scripts/report.py ...`` = ``proxyclip-report ...``: see :mod:`proxyclip_pl.commands.report`."""
from proxyclip_pl.commands.report import cli

if __name__ == "__main__":
    cli()
