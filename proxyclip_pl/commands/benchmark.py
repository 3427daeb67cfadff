r"""Time ``ProxyCLIP.predict`` end to end against a one-window-at-a-time loop (the official procedure).

For every ``--image-size WxH`` a seeded synthetic RGB image of that size is segmented by

* ``predict``: the project's batched path (windows in batches of ``--window-batch-size``,
  fused post-processing), and
* ``predict_one_window_at_a_time`` from :mod:`proxyclip_pl.reference` (the package's one plain
  reference, see docs/method_notes.md, 'Sliding window' and 'Post-processing'): it runs
  ``model.window_logits`` on one padded window at a time, accumulates into a float32 buffer + count
  matrix, averages, upsamples, takes ``softmax(40 L)`` over all queries, the per-class max of
  probabilities via the official one-hot product, argmax and the ``prob_thd`` threshold,

with the same models and precision. Reported per size: median seconds after warm-up, images/s of both
and their ratio, windows/s, FLOPs of one ``predict`` (``FlopCounterMode``) and the achieved GFLOP/s next
to a measured dense-matmul peak of the same device and dtype, peak memory (measured in a fresh
subprocess per size) and the label-map agreement of the two paths (1.0 in fp32). Text embeddings are
computed once when the model is built, outside every timed region. Weights may be ``random``: the speed
does not depend on them.

Examples (paper models, random init; add real weights with --clip-weights/--vfm-weights;
``python scripts/benchmark.py ...`` runs the same)::

    proxyclip-benchmark --image-size 2048x1024 --dataset-settings cityscapes
    proxyclip-benchmark --clip-weights random --vfm-weights random --image-size 500x375 \
        --json bench_voc.json
    proxyclip-benchmark --clip-weights random --vfm-weights random --image-size 2048x1024 \
        --dataset-settings cityscapes --vocabulary cityscapes --precision bf16-mixed --json bench_city.json

The settings (short side / window side ``--crop`` / stride / prob_thd) are 336 / 336 / 112 / 0 unless
``--dataset-settings KEY`` takes them from ``datamodules.BENCHMARKS[KEY]``; an image size alone never
switches them (2048x1024 needs ``--dataset-settings cityscapes`` for the Cityscapes protocol).
``--short-side/--crop/--stride/--prob-thd`` override single values. See docs/benchmark.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from datamodules import BENCHMARKS
from proxyclip_pl.cli import add_model_arguments, model_kwargs, run_cli
from proxyclip_pl.factory import build_proxyclip
from proxyclip_pl.reference import predict_one_window_at_a_time  # the naive baseline
from proxyclip_pl.sliding_window import window_grid
from proxyclip_pl.commands.measure import (MIB, PRECISIONS, autocast, combine_peaks, count_flops, machine_info,
                                           matmul_peak, synchronize, time_runs, timing_summary)
from proxyclip_pl.resources import max_rss_mib

#: Built-in benchmark vocabulary (5 classes, 7 queries) used without ``--vocabulary``.
DEFAULT_VOCABULARY = [["background"], ["person", "people"], ["car", "vehicle"], ["tree"], ["sky"]]
#: Settings used without ``--dataset-settings``: ProxyCLIP's defaults (docs/method_notes.md, 'Per-dataset settings').
DEFAULT_SETTINGS = {"short_side": 336, "crop": 336, "stride": 112, "prob_thd": 0.0}
#: Line prefix of the memory probe's answer on stdout.
PROBE_MARKER = "BENCHMARK_MEMORY_PROBE "
# ----------------------------------------------------------------------------------- helpers
def parse_image_size(text: str) -> tuple[int, int]:
    """``'500x375'`` -> (width, height)."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must be WxH (e.g. 500x375), got {text!r}") from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"image size must be positive, got {text!r}")
    return width, height


def synthetic_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Seeded smooth-ish uint8 RGB image [height, width, 3]: low-res noise upsampled, plus fine noise."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, height // 32), max(2, width // 32), generator=gen)
    smooth = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
    noisy = smooth + 0.05 * torch.randn(3, height, width, generator=gen)
    return (noisy.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


# ------------------------------------------------------------------------------------ set-up
def resolve_settings(args: argparse.Namespace) -> dict:
    settings = dict(DEFAULT_SETTINGS, source="default")
    if args.dataset_settings:
        if args.dataset_settings not in BENCHMARKS:
            raise ValueError(f"unknown --dataset-settings {args.dataset_settings!r}; known: {', '.join(BENCHMARKS)}")
        preset = BENCHMARKS[args.dataset_settings]
        settings = dict(short_side=preset.short_side, crop=preset.crop_size, stride=preset.stride,
                        prob_thd=preset.prob_thd, source=args.dataset_settings)
    for name in ("short_side", "crop", "stride", "prob_thd"):
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    return settings


def resolve_vocabulary(name: str | None) -> tuple[list[list[str]], str]:
    if name is None:
        return [list(c) for c in DEFAULT_VOCABULARY], "builtin"
    from proxyclip_pl.vocabulary import load_vocabulary  # here: open_clip, only for a named vocabulary

    if name in BENCHMARKS:  # a registered benchmark may carry its classes instead of a file
        spec = BENCHMARKS[name]
        vocabulary = [list(c) for c in spec.vocabulary] if spec.vocabulary is not None else None
        return vocabulary or load_vocabulary(spec.vocabulary_file), name
    if Path(name).is_file():
        return load_vocabulary(name), str(name)
    raise ValueError(
        f"unknown --vocabulary {name!r}: use a benchmark key ({', '.join(BENCHMARKS)}) or a vocabulary file")


def build_model(args: argparse.Namespace, settings: dict, vocabulary: list[list[str]]):
    return build_proxyclip(
        vocabulary, prob_thd=settings["prob_thd"], short_side=settings["short_side"], slide_crop=settings["crop"],
        slide_stride=settings["stride"], device=args.device, **model_kwargs(args),
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="proxyclip-benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-size", dest="image_sizes", action="append", type=parse_image_size, metavar="WxH",
                   help="synthetic image size, width x height; repeatable (default: 500x375)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing, per path (default: %(default)s)")
    p.add_argument("--runs", type=int, default=5,
                   help="timed calls per path; the median is reported (default: %(default)s)")
    p.add_argument("--precision", default="32", choices=list(PRECISIONS),
                   help="fp32, or autocast bf16/fp16 (default: %(default)s)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda[:i] (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--vocabulary", default=None,
                   help="benchmark key (voc21, coco_object, cityscapes, ...) or vocabulary file "
                        "(default: 5 built-in classes)")
    p.add_argument("--dataset-settings", default=None,
                   help="take short side / window side / stride / prob_thd from datamodules.BENCHMARKS[KEY] "
                   "(e.g. cityscapes)")
    p.add_argument("--short-side", type=int, default=None, help="override the test-time short side")
    p.add_argument("--crop", type=int, default=None, help="override the window side (official slide_crop)")
    p.add_argument("--stride", type=int, default=None, help="override the sliding-window stride")
    p.add_argument("--prob-thd", type=float, default=None, help="override the probability threshold")
    p.add_argument("--image-seed", type=int, default=0, help="seed of the synthetic image (default: %(default)s)")
    p.add_argument("--matmul-sizes", default="1024,2048,4096",
                   help="comma-separated n of the n x n torch.mm peak measurement (default: %(default)s)")
    p.add_argument("--skip-memory", action="store_true", help="do not run the per-size memory probe subprocesses")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--_memory-probe", dest="memory_probe", action="store_true", help=argparse.SUPPRESS)
    suite = p.add_argument_group("full-table suite (--suite; see proxyclip_pl.commands.suite)")
    suite.add_argument("--suite", action="store_true",
                       help="time --data all against eight separate runs on generated miniatures (identical results), "
                       "SIGKILL/--resume three times, text encoding old vs new; uses --clip/--vfm (random weights), "
                       "--device, --json")
    suite.add_argument("--suite-dir", default=None, help="working folder of the suite (default: a new temporary one)")
    suite.add_argument("--suite-images", type=int, default=2, help="images per miniature benchmark (default: %(default)s)")
    suite.add_argument("--text-queries", type=int, default=12,
                       help="COCO-Stuff queries for the text-encoding comparison (0: skip; -1: all 171; "
                       "default: %(default)s, the full-length path takes ~1000 s for all on 2 CPU cores)")
    add_model_arguments(p)
    args = p.parse_args(argv)
    args.image_sizes = args.image_sizes or [(500, 375)]
    if args.warmup < 0 or args.runs < 1:
        p.error("--warmup must be >= 0 and --runs >= 1")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    try:
        args.matmul_sizes = [int(s) for s in str(args.matmul_sizes).split(",") if s.strip()]
    except ValueError:
        p.error(f"--matmul-sizes must be comma-separated integers, got {args.matmul_sizes!r}")
    return args


# ------------------------------------------------------------------------------------ memory
def probe_argv(args: argparse.Namespace, size: tuple[int, int]) -> list[str]:
    """Command line of a fresh process that measures the peak memory of one ``predict`` at ``size``."""
    argv = [sys.executable, "-m", "proxyclip_pl.commands.benchmark", "--_memory-probe",
            "--image-size", f"{size[0]}x{size[1]}", "--precision", args.precision, "--device", args.device, "--image-seed", str(args.image_seed),
            "--clip", args.clip, "--vfm", args.vfm, "--vfm-weights", args.vfm_weights, "--attention", args.attention,
            "--seed", str(args.seed)]
    if args.clip_weights is not None:
        argv += ["--clip-weights", args.clip_weights]
    for flag, value in (("--threads", args.threads), ("--vocabulary", args.vocabulary),
                        ("--window-batch-size", args.window_batch_size),
                        ("--dataset-settings", args.dataset_settings), ("--short-side", args.short_side),
                        ("--crop", args.crop), ("--stride", args.stride), ("--prob-thd", args.prob_thd)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def run_memory_probe(args: argparse.Namespace, size: tuple[int, int]) -> dict:
    proc = subprocess.run(probe_argv(args, size), capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(PROBE_MARKER):
            return json.loads(line[len(PROBE_MARKER):])
    raise RuntimeError(f"memory probe for {size[0]}x{size[1]} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")


def memory_probe(args: argparse.Namespace, model, settings: dict) -> dict:
    """Body of ``--_memory-probe``: one ``predict`` in this (fresh) process, peak memory on stdout."""
    device = torch.device(args.device)
    width, height = args.image_sizes[0]
    image = synthetic_image(width, height, args.image_seed)
    out: dict[str, Any] = {"kind": "cuda" if device.type == "cuda" else "rss",
                           "peak_rss_before_predict_mib": max_rss_mib()}
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        out["cuda_allocated_before_predict_mib"] = torch.cuda.memory_allocated(device) / MIB
    with autocast(device.type, args.precision):
        model.predict(image)
    synchronize(device)
    out["peak_rss_mib"] = max_rss_mib()
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / MIB
        out["cuda_max_reserved_mib"] = torch.cuda.max_memory_reserved(device) / MIB
    print(PROBE_MARKER + json.dumps(out), flush=True)
    return out


# ------------------------------------------------------------------------------------ report
def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    return format(value, spec)


def format_table(report: dict) -> str:
    mixed = report["config"]["precision"] != "32"
    header = ["image", "resized", "windows", "predict img/s", "1-win img/s", "speedup", "windows/s",
              "GFLOP/img", "GFLOP/s", "of peak", "agree", "peak mem MiB"]
    if mixed:
        header += ["agree fp32", "vs fp32 1-win"]
    rows = [header]
    for r in report["results"]:
        mem = r["memory"] or {}
        peak = mem.get("cuda_max_allocated_mib", mem.get("peak_rss_mib"))
        fraction = r["predict"]["fraction_of_peak"]
        row = [
            "{}x{}".format(*r["image_size"]), "{}x{}".format(*r["resized_size"]), str(r["num_windows"]),
            _fmt(r["predict"]["images_per_s"]), _fmt(r["one_window_loop"]["images_per_s"]), _fmt(r["speedup"], ".2f"),
            _fmt(r["predict"]["windows_per_s"]), _fmt(r["flops_per_image"] / 1e9, ".4g"),
            _fmt(r["predict"]["achieved_gflops"], ".4g"),
            _fmt(None if fraction is None else 100 * fraction, ".1f") + "%",
            _fmt(r["agreement"], ".6f"), _fmt(peak, ".0f"),
        ]
        if mixed:
            row += [_fmt(r["agreement_with_fp32"], ".6f"), _fmt(r["speedup_vs_fp32_one_window_loop"], ".2f")]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    m, c, peak = report["machine"], report["config"], report["matmul_peak"]
    s = c["settings"]
    intro = [
        f"device {m['device']} ({m['device_name']}), torch {m['torch_version']}, {m['torch_num_threads']} threads",
        f"CLIP {c['clip']} ({c['clip_weights'] or 'default'}) + VFM {c['vfm']} ({c['vfm_weights']}), attention "
        f"{c['attention']}, precision {c['precision']}, window batch {c['window_batch_size']}",
        f"settings [{s['source']}]: short side {s['short_side']}, crop {s['crop']}, stride {s['stride']}, "
        f"prob_thd {s['prob_thd']}; vocabulary {c['vocabulary']} ({c['num_classes']} classes, "
        f"{c['num_queries']} queries)",
        f"median of {c['runs']} runs after {c['warmup']} warm-up; matmul peak ({peak['dtype']}): "
        f"{_fmt(peak['gflops'], '.4g')} GFLOP/s",
        "",
    ]
    return "\n".join(intro + lines)


# -------------------------------------------------------------------------------------- main
def benchmark_size(args, model, size: tuple[int, int]) -> dict:
    """Timings, FLOPs, agreement and memory of one image size (``fraction_of_peak`` is filled in by ``main``)."""
    device = torch.device(args.device)
    width, height = size
    image = synthetic_image(width, height, args.image_seed)
    resized_h, resized_w = model.preprocess(image).shape[-2:]
    num_windows = len(window_grid(resized_h, resized_w, model.slide_crop, model.slide_stride))

    def run_predict():
        with autocast(device.type, args.precision):
            return model.predict(image)

    def run_loop():
        with autocast(device.type, args.precision):
            return predict_one_window_at_a_time(model, image)

    flops, flops_by_op = count_flops(run_predict)
    fast_labels, loop_labels = run_predict(), run_loop()
    result: dict[str, Any] = {
        "image_size": [width, height],
        "resized_size": [int(resized_w), int(resized_h)],
        "num_windows": num_windows,
        "flops_per_image": flops,
        "flops_by_op": flops_by_op,
        "agreement": (fast_labels == loop_labels).double().mean().item(),
    }
    for key, fn in (("predict", run_predict), ("one_window_loop", run_loop)):
        result[key] = timing_summary(time_runs(fn, device, args.warmup, args.runs), num_windows, flops, None)
    result["speedup"] = result["one_window_loop"]["median_s"] / result["predict"]["median_s"]
    result["agreement_with_fp32"] = result["fp32_one_window_loop"] = result["speedup_vs_fp32_one_window_loop"] = None
    if args.precision != "32":
        fp32_labels = model.predict(image)
        result["agreement_with_fp32"] = (fast_labels == fp32_labels).double().mean().item()
        times = time_runs(lambda: predict_one_window_at_a_time(model, image), device, args.warmup, args.runs)
        result["fp32_one_window_loop"] = timing_summary(times, num_windows, flops, None)
        fp32_loop_s = result["fp32_one_window_loop"]["median_s"]
        result["speedup_vs_fp32_one_window_loop"] = fp32_loop_s / result["predict"]["median_s"]
    result["memory"] = None if args.skip_memory else run_memory_probe(args, size)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.suite:
        return run_suite_command(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda[:i], got {args.device!r}")
    settings = resolve_settings(args)
    vocabulary, vocabulary_name = resolve_vocabulary(args.vocabulary)
    model = build_model(args, settings, vocabulary)  # text embeddings are encoded here, outside all timings
    if args.memory_probe:
        memory_probe(args, model, settings)
        return 0
    if (2048, 1024) in args.image_sizes and args.dataset_settings is None:
        print("note: 2048x1024 runs with the default settings; add --dataset-settings cityscapes for the Cityscapes "
              "protocol (short side 448, window 224, stride 112)", file=sys.stderr)

    dtype = PRECISIONS[args.precision] or torch.float32
    peak_before = matmul_peak(device, dtype, args.matmul_sizes)
    report: dict[str, Any] = {
        "schema_version": 1,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "config": {
            "clip": args.clip, "clip_weights": args.clip_weights, "vfm": args.vfm, "vfm_weights": args.vfm_weights,
            "attention": args.attention, "seed": args.seed, "window_batch_size": model.effective_window_batch_size,
            "precision": args.precision,
            "autocast_dtype": None if PRECISIONS[args.precision] is None else str(dtype).replace("torch.", ""),
            "device": str(device), "threads": args.threads, "warmup": args.warmup, "runs": args.runs,
            "image_seed": args.image_seed, "vocabulary": vocabulary_name, "num_classes": model.num_classes,
            "num_queries": len(model.queries),
            "settings": {**settings, "long_side_cap": model.long_side_cap, "logit_scale": model.logit_scale},
        },
        "matmul_peak": None,
        "results": [],
    }
    for size in args.image_sizes:
        report["results"].append(benchmark_size(args, model, size))
    # measured again after the timings: the best of both is less sensitive to a transiently busy machine
    peak = combine_peaks(peak_before, matmul_peak(device, dtype, args.matmul_sizes))
    report["matmul_peak"] = peak
    for result in report["results"]:
        for key in ("predict", "one_window_loop"):
            if peak["gflops"] and result[key]["achieved_gflops"]:
                result[key]["fraction_of_peak"] = result[key]["achieved_gflops"] / peak["gflops"]
    print(format_table(report))
    write_report(report, args.json)
    return 0


def write_report(report: dict[str, Any], path: str | None) -> None:
    """The report as JSON at ``path`` (folders created), if given."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}")


def run_suite_command(args: argparse.Namespace) -> int:
    """``--suite``: :func:`proxyclip_pl.commands.suite.run_suite`, the report printed (and written to ``--json``)."""
    from proxyclip_pl.commands.suite import run_suite

    device = torch.device(args.device)
    report = run_suite(args.suite_dir, num_images=args.suite_images, accelerator="gpu" if device.type == "cuda" else "cpu",
                       clip=args.clip, vfm=args.vfm, text_queries=None if args.text_queries < 0 else args.text_queries)
    report["machine"] = machine_info(device)
    print(json.dumps(report, indent=2))
    write_report(report, args.json)
    return 0


def cli() -> None:
    """Console entry point ``proxyclip-benchmark`` (and ``python scripts/benchmark.py``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
