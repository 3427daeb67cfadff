"""The figures of ``proxyclip-report``: ``pareto.png`` (average mIoU against images per second) and
``per_class.png`` (per-class IoU of the runs, a heat map per benchmark). Rendered to PNG bytes with matplotlib's
Agg backend (selected inside the functions, never on import), so that nothing is written before every file of the
report is ready."""
from __future__ import annotations

import io
import math
from typing import Sequence

from proxyclip_pl.report import Run, benchmark_columns, number, pareto_points

DPI = 100


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _text(text: str) -> str:
    """A name as literal plot text (matplotlib reads ``$...$`` as mathtext)."""
    return str(text).replace("$", r"\$")


def _png(fig) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def pareto_front(points: Sequence[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """The points no other point beats in both speed and mIoU, fastest first."""
    front, best = [], -math.inf
    for p in sorted(points, key=lambda p: (-p[1], -p[2])):
        if p[2] > best:
            front.append(p)
            best = p[2]
    return front


def pareto_png(runs: Sequence[Run]) -> bytes:
    """One labelled point per run (x: images per second, y: average mIoU), the Pareto front as a dashed step line;
    runs that cannot be placed are named under the axes."""
    plt = _pyplot()
    ylabel, points, skipped = pareto_points(runs)
    fig, ax = plt.subplots(figsize=(7, 5))
    if points:
        xs, ys = [p[1] for p in points], [p[2] for p in points]
        ax.scatter(xs, ys, s=40, color="tab:blue", zorder=3)
        for name, x, y in points:
            ax.annotate(_text(name), (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        front = pareto_front(points)
        if len(front) > 1:
            ax.step([p[1] for p in front], [p[2] for p in front], where="post", linestyle="--",
                    color="tab:gray", linewidth=1, label="Pareto front")
            ax.legend(loc="lower left", fontsize=8)
        if min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        pad_x, pad_y = 0.1 * (max(xs) - min(xs) or max(xs) or 1.0), 0.1 * (max(ys) - min(ys) or max(ys) or 1.0)
        if ax.get_xscale() == "linear":
            ax.set_xlim(max(0.0, min(xs) - pad_x), max(xs) + 3 * pad_x)
        ax.set_ylim(min(ys) - pad_y, max(ys) + pad_y)
    else:
        ax.text(0.5, 0.5, "no run to place", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("images per second")
    ax.set_ylabel(_text(ylabel), fontsize=8 if len(ylabel) > 50 else 10)
    ax.set_title(_text("mIoU against speed (" + ", ".join(run.name for run in runs) + ")"), fontsize=9)
    ax.grid(True, alpha=0.3)
    if skipped:
        fig.text(0.01, 0.01, _text("not placed: " + "; ".join(skipped)), fontsize=7, color="tab:red")
    fig.tight_layout(rect=(0, 0.04 if skipped else 0, 1, 1))
    return _png(fig)


def per_class_png(runs: Sequence[Run]) -> bytes:
    """Per benchmark, a heat map of IoU (rows: classes in label order, columns: runs; grey = undefined), the
    values written in the cells where there is room."""
    import numpy as np

    plt = _pyplot()
    table, others = benchmark_columns(runs)
    keys = [*table, *others]
    ncols = min(4, len(keys))
    nrows = math.ceil(len(keys) / ncols)

    def classes(key: str) -> int:
        return max(len(run.results[key]["per_class_iou"]) for run in runs if key in run.results)

    # each row of panels as tall as its longest class list needs (capped: ADE-847 gets no class labels)
    heights = [min(16.0, 1.6 + 0.18 * max(classes(k) for k in keys[r * ncols:(r + 1) * ncols]))
               for r in range(nrows)]
    longest = max(len(str(c)) for run in runs for res in run.results.values() for c in res["per_class_iou"])
    panel_w = 1.2 + 0.07 * min(longest, 40) + 0.55 * len(runs)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(4.0, panel_w * ncols + 1.5), max(3.0, sum(heights))),
                             squeeze=False, layout="constrained", gridspec_kw={"height_ratios": heights})
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    image = None
    for ax, key in zip(axes.flat, keys):
        names = next(run.results[key]["per_class_iou"] for run in runs if key in run.results)
        have = [run for run in runs if key in run.results]
        values = np.array([[number(run.results[key]["per_class_iou"].get(c)) for run in have] for c in names],
                          dtype=float)  # None -> nan
        image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=cmap, vmin=0.0, vmax=100.0,
                          interpolation="nearest")
        ax.set_xticks(range(len(have)), [_text(run.name) for run in have], rotation=45, ha="right", fontsize=7)
        if len(names) <= 150:
            ax.set_yticks(range(len(names)), [_text(c) for c in names], fontsize=6 if len(names) > 40 else 7)
        else:
            ax.set_ylabel(f"{len(names)} classes (label order)", fontsize=7)
        if len(names) <= 40 and len(have) <= 8:
            for (i, j), v in np.ndenumerate(values):
                if not np.isnan(v):
                    ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=5,
                            color="white" if v < 50 else "black")
        ax.set_title(_text(key), fontsize=9)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="IoU (%)")
    fig.suptitle("per-class IoU (grey: undefined)", fontsize=10)
    return _png(fig)


def figures(runs: Sequence[Run]) -> dict[str, bytes]:
    """file name -> PNG bytes."""
    return {"pareto.png": pareto_png(runs), "per_class.png": per_class_png(runs)}
