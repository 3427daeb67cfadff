"""The analyses' output files (written by global rank 0) and their printed summaries."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..result_files import write_json_atomic
from .binned_pr import BinnedPRResult

COHERENCE_FILE = "coherence.json"
CURVES_FILE = "pr_curves.json"
BOUNDS_FILE = "coherence_bounds.json"
STATS_FILE = "similarity_stats.json"
ATTENTION_FILE = "attention.npz"


def _finite(value: float) -> float | None:
    """JSON has no NaN: undefined statistics are written as null."""
    return None if value is None or not math.isfinite(value) else float(value)


def _clean(payload: Any) -> Any:
    if isinstance(payload, dict):
        return {k: _clean(v) for k, v in payload.items()}
    if isinstance(payload, float):
        return _finite(payload)
    return payload


def write_coherence(output_dir: Path, results: Mapping[str, BinnedPRResult]) -> dict[str, Any]:
    """``coherence.json`` ({scorer: AP}), ``pr_curves.json``, ``pr_curves.png`` and ``coherence_bounds.json``
    ({scorer: {ap, ap_low, ap_high, max_error, positives, negatives, distinct_thresholds}}: the certified
    interval of the exact AP, see :mod:`proxyclip_pl.analysis.binned_pr`).

    Returns:
        ``{"ap": {scorer: AP}, "curves": {...}, "bounds": {...}}``.
    """
    from .plots import plot_pr_curves

    aps = {name: _finite(r.ap) for name, r in results.items()}
    curves = {name: r.curve() for name, r in results.items()}
    bounds = {name: {"ap": _finite(r.ap), "ap_low": _finite(r.ap_low), "ap_high": _finite(r.ap_high),
                     "max_error": _finite(r.max_error), "positives": r.positives, "negatives": r.negatives,
                     "distinct_thresholds": int(len(r.thresholds))} for name, r in results.items()}
    write_json_atomic(output_dir / COHERENCE_FILE, aps)
    write_json_atomic(output_dir / CURVES_FILE, _clean(curves))
    write_json_atomic(output_dir / BOUNDS_FILE, bounds)
    plot_pr_curves(curves, {k: (v if v is not None else math.nan) for k, v in aps.items()},
                   output_dir / "pr_curves.png")
    return {"ap": aps, "curves": curves, "bounds": bounds}


def write_similarity_stats(output_dir: Path, results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``similarity_stats.json`` ({"vfm:<name>": {num_entries, beta, gamma, before, after}}) and
    ``similarity_stats.png``. Returns the JSON content."""
    from .plots import plot_similarity_histograms

    payload, histograms = {}, {}
    for name, result in results.items():
        result = dict(result)
        histograms[name] = result.pop("histograms")
        payload[name] = _clean(result)
    write_json_atomic(output_dir / STATS_FILE, payload)
    plot_similarity_histograms(histograms, output_dir / "similarity_stats.png")
    return payload


def write_attention(output_dir: Path, ids: list[str], points: np.ndarray, maps: Mapping[str, np.ndarray],
                    images: list[np.ndarray]) -> None:
    """``attention.npz`` (ids, points, clip, vfm:<name>) and ``attention.png``."""
    from .plots import plot_attention

    arrays = {"ids": np.array(ids, dtype=str), "points": np.asarray(points, dtype=np.float64),
              **{name: np.asarray(values, dtype=np.float32) for name, values in maps.items()}}
    tmp = output_dir / f".{ATTENTION_FILE}.tmp.npz"
    np.savez(tmp, **arrays)
    tmp.replace(output_dir / ATTENTION_FILE)
    plot_attention(images, ids, points, maps, output_dir / "attention.png")


def format_coherence(aps: Mapping[str, float | None], bounds: Mapping[str, Mapping[str, Any]]) -> str:
    """The printed AP table: scorer, AP, certified error bound, pairs."""
    width = max(10, *(len(n) for n in aps)) + 2
    lines = [f"{'scorer':<{width}}{'AP':>9}{'max err':>10}{'positives':>14}{'negatives':>14}"]
    for name, ap in aps.items():
        b = bounds[name]
        err = b["max_error"]
        lines.append(f"{name:<{width}}{(f'{ap:.4f}' if ap is not None else 'nan'):>9}"
                     f"{(f'{err:.1e}' if err is not None else '-'):>10}{b['positives']:>14}{b['negatives']:>14}")
    return "\n".join(lines)


def format_similarity_stats(payload: Mapping[str, Mapping[str, Any]]) -> str:
    """The printed statistics table: one line per VFM and side."""
    keys = ("mean", "std", "min", "q05", "median", "q95", "max")
    width = max(10, *(len(n) for n in payload)) + 9
    lines = [f"{'':<{width}}" + "".join(f"{k:>9}" for k in keys) + f"{'A>=0':>9}"]
    for name, entry in payload.items():
        for side in ("before", "after"):
            values = entry[side]
            cells = "".join(f"{values[k]:>9.4f}" if values[k] is not None else f"{'nan':>9}" for k in keys)
            share = values.get("frac_nonnegative") if side == "after" else None
            extra = f"{share:>9.4f}" if share is not None else f"{'':>9}"
            lines.append(f"{name + ' ' + side:<{width}}{cells}{extra}")
    return "\n".join(lines)
