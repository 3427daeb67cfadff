"""The tables of ``proxyclip-report`` (see :mod:`proxyclip_pl.commands.report` and docs/report.md): reading
``proxyclip-test`` run folders and building the leaderboard, per-class and diagnostics tables.

Plain Python and numpy: no Lightning, no torch (except :func:`registry_published`, which loads a method's spec).
A run folder is read in full and checked before anything is written, so that a refused input writes no file.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from proxyclip_pl.commands.compare import load
from proxyclip_pl.native_protocols import DATASETS

#: The paper's Table-1 benchmarks, in its column order: the ``avg`` is their mean.
TABLE_ORDER: tuple[str, ...] = tuple(DATASETS)
REQUIRED_KEYS = ("dataset", "mIoU", "per_class_iou", "config")
#: ``config`` fields every benchmark of a run must agree on (one run = one method, towers and protocol).
CONFIG_FIELDS = ("method", "clip", "vfm", "protocol")
#: A method's published numbers and where they come from, or None (see :func:`registry_published`).
Published = tuple[Mapping[str, "float | None"], str] | None
PublishedLookup = Callable[[str], Published]


@dataclass
class Run:
    """One RUN_DIR: its results by benchmark key (in folder-name order) and the confusion matrices beside them."""

    name: str
    path: Path
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    confusion: dict[str, np.ndarray | None] = field(default_factory=dict)

    def config(self, key: str) -> str:
        """``config[key]`` of the run as text ('' when none)."""
        value = next(iter(self.results.values()))["config"].get(key)
        return "" if value is None else str(value)

    def miou(self, key: str) -> float | None:
        res = self.results.get(key)
        return None if res is None else number(res.get("mIoU"))

    @property
    def avg(self) -> float | None:
        """Mean mIoU over the eight Table-1 benchmarks, only when the run has all eight."""
        values = [self.miou(k) for k in TABLE_ORDER]
        return None if any(v is None for v in values) else sum(values) / len(values)

    @property
    def images_per_second(self) -> float | None:
        """Images evaluated in all passes / seconds of all passes; a shared pass (its ``shared_pass`` list) counts
        once. Images of a pass: ``num_images`` less ``resumed_images`` (the images the pass itself evaluated)."""
        passes: dict[tuple, tuple[float, float]] = {}
        for key, res in self.results.items():
            seconds, images = number(res.get("seconds")), number(res.get("num_images"))
            if seconds is None or images is None:
                return None  # an older run: no speed recorded
            images -= number(res.get("resumed_images")) or 0.0
            shared = res.get("shared_pass")
            pass_key = tuple(shared) if isinstance(shared, list) and shared else (key,)
            old_seconds, old_images = passes.get(pass_key, (0.0, 0.0))
            passes[pass_key] = (max(old_seconds, seconds), max(old_images, images))
        total = sum(s for s, _ in passes.values())
        return sum(i for _, i in passes.values()) / total if total > 0 else None

    @property
    def peak_memory_mib(self) -> float | None:
        values = [number(res.get("peak_memory_mib")) for res in self.results.values()]
        return None if any(v is None for v in values) else max(values)

    @property
    def device(self) -> str:
        """As recorded; the distinct devices joined by `` / `` when the benchmarks ran on different ones."""
        devices = [str(res["device"]) for res in self.results.values() if res.get("device") not in (None, "")]
        return " / ".join(dict.fromkeys(devices))


def number(value: Any) -> float | None:
    """A finite number from JSON, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def fmt(value: float | None) -> str:
    """2 decimals ('' when not available; never ``-0.00``)."""
    return "" if value is None else f"{round(value, 2) + 0.0:.2f}"


def run_name(path: Path) -> str:
    """A run's name: its folder's name (``runs/a/`` and ``runs/a`` -> ``a``; ``.`` -> the current folder's)."""
    return Path(os.path.abspath(path)).name


def read_result(path: Path) -> dict[str, Any]:
    """One results.json, with the keys the report needs (ValueError naming the file and the keys otherwise)."""
    res = load(path)  # not a file / not JSON / no per_class_iou mapping: compare's errors
    missing = [k for k in REQUIRED_KEYS if k not in res]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: is it a proxyclip-test results.json?")
    if not res["per_class_iou"]:
        raise ValueError(f"{path}: 'per_class_iou' is empty: a benchmark has at least one class")
    if not isinstance(res["dataset"], str) or not res["dataset"]:
        raise ValueError(f"{path}: 'dataset' must be a benchmark key, got {res['dataset']!r}")
    if number(res["mIoU"]) is None:
        raise ValueError(f"{path}: 'mIoU' must be a number, got {res['mIoU']!r}")
    if not isinstance(res["config"], dict):
        raise ValueError(f"{path}: 'config' must be a mapping, got {type(res['config']).__name__}")
    return res


def read_confusion(path: Path, classes: int) -> np.ndarray | None:
    """confusion.npy beside a results.json (None when absent); a [C, C] matrix of its C classes."""
    if not path.is_file():
        return None
    try:
        matrix = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path} is not a readable .npy confusion matrix: {exc}") from None
    if matrix.ndim != 2 or matrix.shape != (classes, classes) or not np.issubdtype(matrix.dtype, np.number):
        raise ValueError(f"{path} is a {matrix.dtype} array of shape {matrix.shape}, expected the "
                         f"[{classes}, {classes}] confusion matrix of the results.json beside it")
    return matrix


def results_files(run_dir: Path) -> list[Path]:
    """``RUN_DIR/results.json``, else ``RUN_DIR/<key>/results.json`` in folder-name order."""
    if not run_dir.exists():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    if not run_dir.is_dir():
        raise NotADirectoryError(f"{run_dir} is not a folder: give a proxyclip-test output folder")
    if (run_dir / "results.json").is_file():
        return [run_dir / "results.json"]
    files = sorted((p / "results.json" for p in run_dir.iterdir() if (p / "results.json").is_file()),
                   key=lambda p: p.parent.name)
    if not files:
        raise FileNotFoundError(f"{run_dir} holds no results.json (neither itself nor one level down): "
                                "is it a proxyclip-test output folder?")
    return files


def load_run(run_dir: Path) -> Run:
    """One run folder, checked: one result per benchmark key, one method/towers/protocol."""
    run = Run(run_name(run_dir), run_dir)
    for path in results_files(run_dir):
        res = read_result(path)
        key = res["dataset"]
        if key in run.results:
            raise ValueError(f"run {run.name}: two results for benchmark {key} ({path} and another folder)")
        run.results[key] = res
        run.confusion[key] = read_confusion(path.with_name("confusion.npy"), len(res["per_class_iou"]))
    for name in CONFIG_FIELDS:
        values = {str(res["config"].get(name)) for res in run.results.values()}
        if len(values) > 1:
            raise ValueError(f"run {run.name} mixes {name} values ({', '.join(sorted(values))}): one run folder "
                             "must hold one method's results")
    return run


def load_runs(run_dirs: Sequence[Path]) -> list[Run]:
    """Every run, in command-line order; refuses two runs of one name and different label sets of one key."""
    runs = [load_run(Path(d)) for d in run_dirs]
    seen: dict[str, Run] = {}
    for run in runs:
        if run.name in seen:
            raise ValueError(f"two runs are named {run.name} ({seen[run.name].path} and {run.path}): runs are "
                             "named by their folder's name, give folders of different names")
        seen[run.name] = run
    labels: dict[str, tuple[str, list[str]]] = {}
    for run in runs:
        for key, res in run.results.items():
            names = list(res["per_class_iou"])
            if key not in labels:
                labels[key] = (run.name, names)
            elif labels[key][1] != names:
                first, other = labels[key]
                diff = next((i for i, (a, b) in enumerate(zip(other, names)) if a != b), min(len(other), len(names)))
                raise ValueError(f"runs {first} and {run.name} have different label sets for benchmark {key} "
                                 f"({len(other)} vs {len(names)} classes, first difference at label {diff}): "
                                 "their results cannot be compared")
    return runs


def benchmark_columns(runs: Sequence[Run]) -> tuple[list[str], list[str]]:
    """(the Table-1 benchmarks any run has, in paper order; every other key in order of first appearance)."""
    present = [k for run in runs for k in run.results]
    return [k for k in TABLE_ORDER if k in present], [k for k in dict.fromkeys(present) if k not in TABLE_ORDER]


#: The methods whose published row the leaderboard shows: those published with CLIP ViT-B/16 OpenAI weights in the
#: setting this package reproduces (report contract). Trident's numbers include its SAM refinement (not built here),
#: CorrCLIP's use MetaCLIP weights and SAM2 masks; their rows stay in the registry and the README.
PUBLISHED_ROWS = ("proxyclip", "sclip", "naclip", "clearclip")


def registry_published(method: str) -> Published:
    """``method_spec(method).published`` and ``source`` of a method of :data:`PUBLISHED_ROWS` (loads the method's
    spec: torch), else None."""
    from proxyclip_pl.registry import method_sources, method_spec

    if method not in PUBLISHED_ROWS or method not in method_sources():
        return None
    try:
        spec = method_spec(method)
    except (ValueError, TypeError, ImportError):  # a broken installed method has no row
        return None
    published = {k: v for k, v in (spec.published or {}).items() if number(v) is not None}
    return (published, spec.source) if published else None


def leaderboard(runs: Sequence[Run], published: PublishedLookup = registry_published
                ) -> tuple[list[str], list[dict[str, str]], dict[str, str]]:
    """(columns, rows as column -> cell, {method: source of its published row}) of leaderboard.csv/.md/.tex."""
    table, others = benchmark_columns(runs)
    benchmarks = [*table, *others]
    columns = ["run", "method", "clip", "vfm", "protocol", "kind", *table, "avg", *others,
               "images_per_second", "peak_memory_mib", "device", "published_source"]
    order = sorted(range(len(runs)), key=lambda i: (runs[i].avg is None, -(runs[i].avg or 0.0), i))
    rows, sources = [], {}
    for i in order:
        run = runs[i]
        base = {"run": run.name, **{name: run.config(name) for name in CONFIG_FIELDS}}
        row = {**base, "kind": "run", **{k: fmt(run.miou(k)) for k in benchmarks}, "avg": fmt(run.avg),
               "images_per_second": fmt(run.images_per_second), "peak_memory_mib": fmt(run.peak_memory_mib),
               "device": run.device}
        rows.append(row)
        pub = published(base["method"]) if base["protocol"] == "native" else None
        if pub is None:
            continue
        numbers, sources[base["method"]] = pub
        pub_values = [number(numbers.get(k)) for k in TABLE_ORDER]
        pub_avg = None if None in pub_values else sum(pub_values) / len(pub_values)
        ref = {"kind": "published", **{k: fmt(number(numbers.get(k))) for k in benchmarks}, "avg": fmt(pub_avg)}
        delta = {"kind": "delta", "avg": fmt(None if run.avg is None or pub_avg is None else run.avg - pub_avg)}
        for k in benchmarks:
            a, b = run.miou(k), number(numbers.get(k))
            delta[k] = fmt(None if a is None or b is None else a - b)
        # the published row's towers are the source's (named in published_source), not the run's
        rows.append({**base, "clip": "", "vfm": "", **ref, "published_source": sources[base["method"]]})
        rows.append({**base, **delta, "published_source": sources[base["method"]]})
    return columns, [{c: row.get(c, "") for c in columns} for row in rows], sources


def results_in_column_order(runs: Sequence[Run]) -> Iterator[tuple[Run, str, dict]]:
    """(run, benchmark key, its results) for every run (given order) × benchmark it has (column order)."""
    table, others = benchmark_columns(runs)
    for run in runs:
        for key in [*table, *others]:
            if key in run.results:
                yield run, key, run.results[key]


def per_class(runs: Sequence[Run]) -> tuple[list[str], list[list[str]]]:
    """per_class.csv: run × benchmark (column order) × class (label order)."""
    rows = []
    for run, key, res in results_in_column_order(runs):
        acc = res.get("per_class_acc") if isinstance(res.get("per_class_acc"), dict) else {}
        for index, (name, iou) in enumerate(res["per_class_iou"].items()):
            rows.append([run.name, key, name, fmt(number(iou)), str(index), fmt(number(acc.get(name)))])
    return ["run", "benchmark", "class", "iou", "label", "acc"], rows


def confusion_diagnostics(matrix: np.ndarray) -> dict[str, float | int | None]:
    """From a [C, C] confusion matrix (rows = ground truth, columns = prediction): the classes with union > 0,
    those of them with intersection 0 (and their rate, %), the classes never predicted."""
    m = matrix.astype(np.float64)
    inter = np.diag(m)
    union = m.sum(0) + m.sum(1) - inter
    present = int((union > 0).sum())
    zero = int(((union > 0) & (inter == 0)).sum())
    return {"present_classes": present, "zero_iou_classes": zero,
            "zero_iou_rate": 100.0 * zero / present if present else None,
            "never_predicted": int((m.sum(0) == 0).sum())}


def diagnostics(runs: Sequence[Run]) -> tuple[list[str], list[list[str]]]:
    """diagnostics.csv: one row per run × benchmark."""
    columns = ["run", "benchmark", "classes", "zero_iou_rate", "never_predicted", "pixel_acc", "miou",
               "present_classes", "zero_iou_classes"]
    rows = []
    for run, key, res in results_in_column_order(runs):
        matrix = run.confusion.get(key)
        d = confusion_diagnostics(matrix) if matrix is not None else {}
        rows.append([run.name, key, str(len(res["per_class_iou"])), fmt(d.get("zero_iou_rate")),
                     "" if matrix is None else str(d["never_predicted"]), fmt(number(res.get("aAcc"))),
                     fmt(run.miou(key)), "" if matrix is None else str(d["present_classes"]),
                     "" if matrix is None else str(d["zero_iou_classes"])])
    return columns, rows


def to_csv(columns: Sequence[str], rows: Sequence[Sequence[str]] | Sequence[Mapping[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row[c] for c in columns] if isinstance(row, Mapping) else row)
    return buf.getvalue()


#: Columns of the Markdown / LaTeX leaderboard: the CSV's without ``kind`` (the first cell says it) and the source
#: (a note under the table).
def display_columns(columns: Sequence[str]) -> list[str]:
    return [c for c in columns if c not in ("kind", "published_source")]


def first_cell(row: Mapping[str, str]) -> str:
    return row["run"] if row["kind"] == "run" else f"{row['kind']} ({row['run']})"


def numeric(column: str) -> bool:
    return column not in ("run", "method", "clip", "vfm", "protocol", "kind", "device", "published_source")


def notes(sources: Mapping[str, str]) -> list[str]:
    return [f"published ({method}): {source}" for method, source in sources.items()]


def to_markdown(columns: Sequence[str], rows: Sequence[Mapping[str, str]], sources: Mapping[str, str]) -> str:
    shown = display_columns(columns)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [line(shown), "|" + "|".join("---:" if numeric(c) else ":---" for c in shown) + "|"]
    for row in rows:
        lines.append(line([first_cell(row), *(row[c] for c in shown[1:])]))
    if sources:
        lines += ["", *(f"- {note}" for note in notes(sources))]
    return "\n".join(lines) + "\n"


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """``pxc_b16`` -> ``pxc\\_b16`` (every LaTeX special character)."""
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(columns: Sequence[str], rows: Sequence[Mapping[str, str]], sources: Mapping[str, str]) -> str:
    """A booktabs ``tabular`` (``\\usepackage{booktabs}``), the notes in a paragraph after it."""
    shown = display_columns(columns)

    def line(cells: Sequence[str]) -> str:
        return " & ".join(latex_escape(c) for c in cells) + r" \\"

    lines = ["% proxyclip-report leaderboard (needs \\usepackage{booktabs})",
             r"\begin{tabular}{" + "".join("r" if numeric(c) else "l" for c in shown) + "}", r"\toprule",
             line(shown), r"\midrule"]
    lines += [line([first_cell(row), *(row[c] for c in shown[1:])]) for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if sources:
        lines += ["", r"\par{\footnotesize " + "; ".join(latex_escape(n) for n in notes(sources)) + "}"]
    return "\n".join(lines) + "\n"


def pareto_points(runs: Sequence[Run]) -> tuple[str, list[tuple[str, float, float]], list[str]]:
    """(y label, [(run, images per second, y)], notes) of pareto.png: y = the run's ``avg``; when no run has one,
    the mean mIoU over the benchmarks every run has (said in the label). Runs without a speed are named in the
    notes."""
    ylabel, value = "average mIoU over the eight Table-1 benchmarks (%)", (lambda run: run.avg)
    if all(run.avg is None for run in runs):
        shared = [k for k in [*TABLE_ORDER, *benchmark_columns(runs)[1]] if all(k in run.results for run in runs)]
        ylabel = (f"mean mIoU over {', '.join(shared)} (%)" if shared else "no benchmark in common")
        value = (lambda run: sum(run.miou(k) for k in shared) / len(shared)) if shared else (lambda run: None)
    points, skipped = [], []
    for run in runs:
        y, x = value(run), run.images_per_second
        if y is None:
            skipped.append(f"{run.name}: no average")
        elif x is None:
            skipped.append(f"{run.name}: no speed recorded")
        else:
            points.append((run.name, x, y))
    return ylabel, points, skipped


def build(runs: Sequence[Run], published: PublishedLookup = registry_published) -> dict[str, str]:
    """Every text file of the report: file name -> content."""
    columns, rows, sources = leaderboard(runs, published)
    return {"leaderboard.csv": to_csv(columns, rows), "leaderboard.md": to_markdown(columns, rows, sources),
            "leaderboard.tex": to_latex(columns, rows, sources), "per_class.csv": to_csv(*per_class(runs)),
            "diagnostics.csv": to_csv(*diagnostics(runs))}
