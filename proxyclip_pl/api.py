"""``proxyclip_pl.evaluate``: a benchmark evaluation from Python (a notebook, another tool), without ``argv``.

It runs exactly what ``proxyclip-test`` runs (the same checks, records, outputs and console lines) and returns
what ``results.json`` holds. Several processes: ``devices=2`` with ``strategy="ddp_spawn"`` from a notebook
(the default ``ddp`` re-launches the calling script, which a notebook is not).
"""
from __future__ import annotations

from typing import Any, Sequence


def _flags(options: dict[str, Any]) -> list[str]:
    """Keyword options -> ``proxyclip-test`` flags (``clip_weights="random"`` -> ``--clip-weights random``)."""
    from .commands.evaluate import parse_args

    known = {name for name in vars(parse_args(["--data", "voc21"]))}
    argv: list[str] = []
    for name, value in options.items():
        if name not in known or name == "list":
            raise TypeError(f"evaluate() got an unknown option {name!r}; options are the proxyclip-test flags with "
                            f"underscores: {', '.join(sorted(known - {'list'}))}")
        flag = "--" + name.replace("_", "-")
        if value is None:
            if name == "vfm":  # no VFM: ProxyCLIP's no-VFM attention baselines
                argv += [flag, "none"]
            continue
        if isinstance(value, bool):
            argv += [flag] if value else []
        else:
            argv += [flag, str(value)]
    return argv


def evaluate(method: str, data: str | Sequence[str], data_root: str | None = None, output_dir: str | None = None,
             **options: Any) -> dict[str, Any]:
    """Evaluate ``method`` on one or several benchmarks, as ``proxyclip-test`` does.

    Args:
        method: a registered method (``proxyclip-test --list``) or ``module:factory``.
        data: a benchmark key, a dataset card path, ``"all"``, or several (a list or a comma-separated string).
        data_root: as ``--data-root``; ``output_dir``: as ``--output-dir`` (default: a new folder under outputs/).
        options: the other flags with underscores: ``clip``, ``clip_weights``, ``vfm`` (``None``: no VFM),
            ``vfm_weights``, ``seed``, ``accelerator``, ``devices``, ``num_workers``, ``text_cache_dir``,
            ``protocol``, ``limit``, ``resume``, ``per_image``, ...
    Returns:
        The ``results.json`` content; for several benchmarks a dict keyed by benchmark.
    Raises:
        ValueError / FileNotFoundError: the one-line errors of the command; ``RunInterrupted`` on Ctrl-C (its
        message is the command that resumes the run).
    """
    from .commands.evaluate import RunInterrupted, parse_args, run
    from .commands.jobs import is_multi

    keys = [data] if isinstance(data, str) else list(data)
    argv = ["--method", method, "--data", ",".join(keys)]
    argv += _flags({"data_root": data_root, "output_dir": output_dir, **options})
    args = parse_args(argv)
    try:
        results = run(args, argv)
    except RunInterrupted:
        raise RunInterrupted(f"interrupted: every image evaluated so far is recorded in {args.output_dir}; to "
                             f"continue, call evaluate() again with output_dir={args.output_dir!r} and resume=True"
                             ) from None
    return results if is_multi(args) else next(iter(results.values()))
