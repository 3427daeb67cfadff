"""The analyses' figures (matplotlib, object API with the Agg canvas: no global backend state, no display)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - a core dependency; the message says how to get it
        raise ValueError("the analyses' figures need matplotlib: pip install matplotlib "
                         "(or pip install -e \".[analysis]\")") from None
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def plot_pr_curves(curves: Mapping[str, Mapping[str, Any]], aps: Mapping[str, float], path: Path) -> None:
    """``pr_curves.png``: precision against recall, one curve per scorer, AP in the legend.

    Args:
        curves: scorer -> its ``pr_curves.json`` entry (``precision``, ``recall`` lists).
        aps: scorer -> AP.
    """
    figure = _figure(6.5, 5.0)
    ax = figure.add_subplot(1, 1, 1)
    for name, curve in curves.items():
        # the points above the highest score (tp = fp = 0: precision 1 by convention) are not drawn
        scored = [i for i, (t, f) in enumerate(zip(curve["tp"], curve["fp"])) if t + f > 0]
        ax.plot([curve["recall"][i] for i in scored], [curve["precision"][i] for i in scored],
                label=f"{name} (AP {aps[name]:.3f})", linewidth=1.5)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("Same-label patch pairs: precision-recall per scorer")
    figure.tight_layout()
    figure.savefig(path)


def plot_attention(images: Sequence[np.ndarray], ids: Sequence[str], points: np.ndarray,
                   maps: Mapping[str, np.ndarray], path: Path) -> None:
    """``attention.png``: one row per (image, point): the image with the seed marked, then one map per scorer.

    Args:
        images: N arrays [S, S, 3] uint8 (the analysis input).
        points: float [P, 2] (y, x) in [0, 1).
        maps: scorer -> float [N, P, h, w] (its own grid; drawn stretched over the image).
    """
    n, p = len(images), len(points)
    columns = 1 + len(maps)
    figure = _figure(2.2 * columns, 2.2 * n * p)
    for i in range(n):
        size = images[i].shape[0]
        for j, (y, x) in enumerate(points):
            row = i * p + j
            ax = figure.add_subplot(n * p, columns, row * columns + 1)
            ax.imshow(images[i])
            ax.plot([x * size], [y * size], marker="*", color="red", markersize=12, markeredgecolor="white")
            ax.set_title(f"{ids[i]} ({y:.2f}, {x:.2f})", fontsize=7)
            ax.axis("off")
            for c, (name, values) in enumerate(maps.items()):
                ax = figure.add_subplot(n * p, columns, row * columns + 2 + c)
                ax.imshow(values[i, j], cmap="viridis", interpolation="nearest")
                ax.set_title(name, fontsize=7)
                ax.axis("off")
    figure.tight_layout()
    figure.savefig(path)


def plot_similarity_histograms(histograms: Mapping[str, Mapping[str, tuple[np.ndarray, tuple[float, float]]]],
                               path: Path, bars: int = 200) -> None:
    """``similarity_stats.png``: per VFM (row) the histogram of S (before) and of A (after), as densities.

    Args:
        histograms: VFM scorer -> {"before", "after": (counts [nb], (low, high))}.
        bars: bars per histogram at most (adjacent bins are merged).
    """
    rows = max(len(histograms), 1)
    figure = _figure(9.0, 2.6 * rows)
    for r, (name, sides) in enumerate(histograms.items()):
        for c, side in enumerate(("before", "after")):
            counts, (low, high) = sides[side]
            counts = np.asarray(counts, dtype=np.float64)
            starts = np.unique(np.linspace(0, len(counts), min(bars, len(counts)) + 1).astype(int))
            merged = np.add.reduceat(counts, starts[:-1])
            edges = low + (high - low) * starts / len(counts)
            used = np.nonzero(merged)[0]
            ax = figure.add_subplot(rows, 2, r * 2 + c + 1)
            if len(used):
                lo, hi = used[0], used[-1] + 1
                widths = np.diff(edges)
                ax.bar(edges[lo:hi], merged[lo:hi] / (merged.sum() * widths[lo:hi]), width=widths[lo:hi],
                       align="edge")
            if side == "after":
                ax.axvline(0.0, color="red", linewidth=1)
            label = "S (cosine similarity)" if side == "before" else "A = gamma (S - beta mean S)"
            ax.set_title(f"{name}: {side}", fontsize=9)
            ax.set_xlabel(label, fontsize=8)
            ax.set_ylabel("density", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
