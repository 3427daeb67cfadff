"""The printed Table-1 row with the published one, and ``proxyclip-test --list``."""
from __future__ import annotations

import argparse
from typing import Mapping, Sequence

from datamodules import BENCHMARKS
from proxyclip_pl.native_protocols import DATASETS
from proxyclip_pl.registry import method_sources
from proxyclip_pl.commands.jobs import Job, is_card, registered


#: Table 1 column order (``--data all``).
TABLE_ORDER = list(DATASETS)


def benchmark_keys() -> list[str]:
    """Every benchmark key as users read them: the table's order first, then the others (ADE-847, PC-459,
    installed and run-time benchmarks)."""
    return [*TABLE_ORDER, *(key for key in BENCHMARKS if key not in TABLE_ORDER)]


def published_row(method: str) -> Mapping[str, float | None] | None:
    """The published mIoU per benchmark of a registered method (``None``: unregistered or none published)."""
    from proxyclip_pl.registry import method_spec

    return method_spec(method).published if registered(method) else None


def publishes(args: argparse.Namespace, jobs: Sequence[Job]) -> bool:
    """Whether the method's published numbers apply to this run: its native protocol and, on every benchmark, its
    native vocabulary (a baseline's published row was measured with its own class-name files, not ours)."""
    from proxyclip_pl.query_vocabularies import query_vocabulary

    return args.protocol == "native" and published_row(args.method) is not None and all(
        not is_card(job.key) and job.vocab.source == query_vocabulary(args.method, job.key, "native").source
        for job in jobs)


def table_row(method: str, protocol: str, row: dict[str, float], reported: bool = True) -> str:
    """Table 1 row of ``method`` (mIoU per benchmark and the average), with the published row under it
    when the method's native protocol was run and its paper/README numbers are known."""
    name = f"{method} ({protocol})"
    width = max(len(name), 10)
    lines = [f"{'':<{width}} | " + " | ".join(f"{k:>11}" for k in row),
             f"{name:<{width}} | " + " | ".join(f"{v:>11.2f}" for v in row.values())]
    published = published_row(method) if reported and protocol == "native" else None
    if published is not None:
        values = [published.get(k) for k in TABLE_ORDER]
        cells = [f"{v:>11.2f}" if v is not None else f"{'-':>11}" for v in values]
        known = [v for v in values if v is not None]
        cells.append(f"{sum(known) / len(known):>11.2f}" if len(known) == len(values) else f"{'-':>11}")
        lines.append(f"{'reported':<{width}} | " + " | ".join(cells))
    return "\n".join(lines)


def list_entries() -> str:
    """``--list``: every method and benchmark with its source."""
    from proxyclip_pl.registry import method_spec

    lines = ["methods:"]
    for name, source in method_sources().items():
        try:  # one broken installed entry must not hide the others
            description = method_spec(name).description
        except (ValueError, TypeError) as exc:
            description = f"(cannot load: {exc})"
        lines.append(f"  {name:<12} {source:<24} {description}")
    lines.append("benchmarks:")
    for key, source in BENCHMARKS.sources().items():
        lines.append(f"  {key:<12} {source:<24} {BENCHMARKS[key].num_classes} classes")
    return "\n".join(lines)
