"""The full-table benchmark (``scripts/benchmark.py --suite``): ``--data all`` against eight separate runs.

On generated miniatures of the eight Table-1 benchmarks (a few images each, with the aspect ratios of the real
images, so that each image has the real number of windows after the test resize) and the default full-size
architectures with random weights, it measures:

* wall time and peak RSS of ``proxyclip-test --data all`` (one model build, shared encoder passes) against eight
  separate ``--data <key>`` runs, the text embeddings warm in the cache on both sides; the metrics and saved
  predictions must be identical;
* the windows each side encodes, and the projection of the saving to the real benchmarks (image counts and
  typical image sizes, each benchmark's windows weighted by its measured seconds per window);
* resumability: one ``--data all`` run killed with SIGKILL at three points (by record count) and resumed each
  time, compared with the uninterrupted run; every image is recorded exactly once over all attempts, so the
  images evaluated are at most N plus those in flight at the kills;
* text encoding of the COCO-Stuff vocabulary, full-length (the loop before the EOT truncation) against the
  truncated forward (``scripts/bench_text.py``, each in its own process for its own peak RSS).

Every run is a subprocess, so the timings include what a user waits for (imports, model builds, Lightning).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from proxyclip_pl.native_protocols import DATASETS

ROOT = Path(__file__).resolve().parents[2]
#: Typical (H, W) of each benchmark's images and its number of test images (for the projection to the real suite).
REAL_IMAGES: dict[str, tuple[tuple[int, int], int]] = {
    "voc21": ((375, 500), 1449), "context60": ((375, 500), 5105), "coco_object": ((480, 640), 5000),
    "voc20": ((375, 500), 1449), "context59": ((375, 500), 5105), "coco_stuff": ((480, 640), 5000),
    "cityscapes": ((1024, 2048), 500), "ade20k": ((512, 683), 2000),
}
#: Miniature image sizes: small files with the real aspect ratios, so that the test resize gives each the real
#: number of windows (2 per VOC / Context / COCO image, 21 per Cityscapes image, 8 per ADE20K image).
MINI_SIZES = {"voc21": (30, 40), "context60": (30, 40), "coco_object": (30, 40), "voc20": (30, 40),
              "context59": (30, 40), "coco_stuff": (30, 40), "cityscapes": (32, 64), "ade20k": (48, 64)}


def _evaluate_command(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "proxyclip_pl.commands.evaluate", *args]


def timed_run(command: Sequence[str]) -> dict[str, Any]:
    """Run ``command``; its wall seconds and peak RSS in MiB (``wait4``'s rusage of that process: Linux KiB)."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n{err.read().decode()[-3000:]}")
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def windows_per_image(key: str, size: tuple[int, int]) -> int:
    """Sliding windows of one ``size`` image under ProxyCLIP's protocol on ``key`` (after the test resize)."""
    from datamodules.resize import rescale_size
    from proxyclip_pl.native_protocols import PROXYCLIP_PROTOCOLS
    from proxyclip_pl.sliding_window import window_grid

    p = PROXYCLIP_PROTOCOLS[key]
    height, width = rescale_size(*size, p.short_side, p.long_side_cap)
    return len(window_grid(height, width, p.slide_crop, p.slide_stride))


def projection(passes: Sequence[Sequence[str]], seconds_per_window: dict[str, float]) -> dict[str, Any]:
    """Encoder work of the real suite: eight separate runs against the shared passes of ``--data all``."""
    windows = {key: windows_per_image(key, size) * count for key, (size, count) in REAL_IMAGES.items()}
    separate = sum(windows.values())
    shared = sum(windows[group[0]] for group in passes)
    weighted_separate = sum(windows[k] * seconds_per_window[k] for k in windows)
    weighted_shared = sum(windows[group[0]] * seconds_per_window[group[0]] for group in passes)
    return {"windows_separate": separate, "windows_shared": shared, "window_ratio": round(separate / shared, 3),
            "encoder_seconds_separate": round(weighted_separate), "encoder_seconds_shared": round(weighted_shared),
            "time_weighted_ratio": round(weighted_separate / weighted_shared, 3),
            "windows_per_image": {k: windows_per_image(k, REAL_IMAGES[k][0]) for k in windows}}


def make_miniatures(data: Path, num_images: int) -> None:
    from datamodules.synthetic import make_fake_benchmark

    for key in DATASETS:
        make_fake_benchmark(key, data, num_images, sizes=(MINI_SIZES[key],))


def warm_text_cache(model_flags: dict[str, str], cache: Path) -> float:
    """Text embeddings of the eight vocabularies into ``cache`` (the keys the runs will look up); seconds."""
    from datamodules import BENCHMARKS
    from proxyclip_pl.factory import text_embeddings_for
    from proxyclip_pl.towers import build_clip
    from proxyclip_pl.vocabulary import load_vocabulary

    start = time.perf_counter()
    clip_model, tokenizer = build_clip(model_flags["clip"], "random", seed=0)
    for key in DATASETS:
        text_embeddings_for(clip_model, tokenizer, load_vocabulary(BENCHMARKS[key].vocabulary_file),
                            model_flags["clip"], "random", 0, cache)
    return round(time.perf_counter() - start, 1)


def same_outputs(a: Path, b: Path) -> list[str]:
    """Differences between two output folders of one benchmark (metrics and saved predictions)."""
    ra, rb = (json.loads((p / "results.json").read_text()) for p in (a, b))
    diffs = [f for f in ("num_images", "mIoU", "aAcc", "mAcc", "per_class_iou", "per_class_acc") if ra[f] != rb[f]]
    pa, pb = (sorted((p / "predictions").iterdir()) if (p / "predictions").is_dir() else [] for p in (a, b))
    if [p.name for p in pa] != [p.name for p in pb] or any(x.read_bytes() != y.read_bytes() for x, y in zip(pa, pb)):
        diffs.append("predictions")
    return diffs


def record_lines(out: Path) -> int:
    """Image records written under every benchmark's ``records/`` of a ``--data all`` output dir."""
    from proxyclip_pl.records import RECORDS_DIR, read_records

    return sum(len(read_records(out / key / RECORDS_DIR)[1]) for key in DATASETS if (out / key / RECORDS_DIR).is_dir())


def kill_and_resume(flags: Sequence[str], out: Path, total_records: int, fractions=(0.2, 0.5, 0.8)) -> dict[str, Any]:
    """``--data all`` killed with SIGKILL when the records reach each fraction of ``total_records``, resumed each
    time, then finished. Returns the record counts per attempt."""
    attempts = []
    for attempt, fraction in enumerate((*fractions, None)):
        before = record_lines(out)
        command = _evaluate_command([*flags, "--output-dir", str(out), *(["--resume"] if attempt else [])])
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
        killed = False
        if fraction is not None:
            target = max(before + 1, int(total_records * fraction))
            while proc.poll() is None:
                if record_lines(out) >= target:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed = True
                    break
                time.sleep(0.05)
        _, err = proc.communicate()
        if not killed and proc.returncode != 0:
            raise RuntimeError(f"attempt {attempt} failed ({proc.returncode}):\n{err.decode()[-3000:]}")
        attempts.append({"killed": killed, "records_before": before, "records_after": record_lines(out)})
    return {"attempts": attempts, "records": record_lines(out), "expected_records": total_records}


def text_encoding(queries: int | None, json_file: Path) -> dict[str, Any]:
    """scripts/bench_text.py on COCO-Stuff: full-length (legacy) against truncated encoding."""
    command = [sys.executable, str(ROOT / "scripts" / "bench_text.py"), "--vocabulary", "coco_stuff",
               "--paths", "legacy,truncated", "--json", str(json_file)]
    if queries:
        command += ["--queries", str(queries)]
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
    return json.loads(json_file.read_text())


def run_suite(workdir: Path | None = None, num_images: int = 2, accelerator: str = "cpu", devices: int = 1,
              clip: str | None = None, vfm: str | None = None, text_queries: int | None = 12,
              kill_fractions: Sequence[float] = (0.2, 0.5, 0.8)) -> dict[str, Any]:
    """Run the whole suite (see the module docstring) and return its report.

    Args:
        workdir: where the miniatures, the text cache and every run's outputs go (default: a new temporary folder).
        num_images: images per miniature benchmark.
        clip, vfm: model names (default: the package defaults, ViT-B/16 and DINO ViT-B/8), random weights.
        text_queries: COCO-Stuff queries for the text-encoding comparison (``None``: all 171; 0: skip it).
        kill_fractions: SIGKILL the killed run when its records reach these fractions of all images (empty: skip).
    """
    from proxyclip_pl.defaults import DEFAULT_CLIP, DEFAULT_VFM

    workdir = Path(workdir or tempfile.mkdtemp(prefix="proxyclip_suite_"))
    data, cache = workdir / "data", workdir / "text_cache"
    models = {"clip": clip or DEFAULT_CLIP, "vfm": vfm or DEFAULT_VFM}
    make_miniatures(data, num_images)
    report: dict[str, Any] = {"workdir": str(workdir), "images_per_benchmark": num_images, **models,
                              "accelerator": accelerator, "devices": devices,
                              "text_cache_warmup_seconds": warm_text_cache(models, cache)}
    flags = ["--data-root", str(data), "--clip", models["clip"], "--clip-weights", "random", "--vfm", models["vfm"],
             "--vfm-weights", "random", "--accelerator", accelerator, "--devices", str(devices), "--num-workers", "0",
             "--text-cache-dir", str(cache), "--save-predictions"]

    separate, results = {}, {}
    for key in DATASETS:
        out = workdir / "separate" / key
        separate[key] = timed_run(_evaluate_command(["--data", key, *flags, "--output-dir", str(out), "--overwrite"]))
        results[key] = json.loads((out / "results.json").read_text())
    shared = timed_run(_evaluate_command(["--data", "all", *flags, "--output-dir", str(workdir / "all"), "--overwrite"]))
    summary = json.loads((workdir / "all" / "summary.json").read_text())
    differences = {k: d for k in DATASETS if (d := same_outputs(workdir / "separate" / k, workdir / "all" / k))}
    separate_seconds = sum(r["seconds"] for r in separate.values())
    seconds_per_window = {k: results[k]["seconds"] / results[k]["windows_encoded"] for k in DATASETS}
    report["image_side"] = {
        "separate_seconds": round(separate_seconds, 2),
        "separate_seconds_per_benchmark": {k: r["seconds"] for k, r in separate.items()},
        "all_seconds": shared["seconds"],
        "speedup": round(separate_seconds / shared["seconds"], 3),
        "separate_peak_rss_mib": max(r["peak_rss_mib"] for r in separate.values()),
        "all_peak_rss_mib": shared["peak_rss_mib"],
        "windows_separate": sum(r["windows_encoded"] for r in results.values()),
        "windows_all": summary["windows_encoded"],
        "passes": summary["passes"],
        "identical_results_and_predictions": not differences,
        "differences": differences,
        "mIoU": {k: summary[k] for k in DATASETS},
    }
    report["projection_real_suite"] = projection(summary["passes"], seconds_per_window)
    if kill_fractions:
        out = workdir / "killed"
        total = sum(r["num_images"] for r in results.values())
        shutil.rmtree(out, ignore_errors=True)
        kills = kill_and_resume(["--data", "all", *flags], out, total, kill_fractions)
        kills["identical_to_uninterrupted"] = not any(same_outputs(workdir / "all" / k, out / k) for k in DATASETS)
        report["kill_and_resume"] = kills
    if text_queries != 0:  # last: the slowest part
        report["text_encoding"] = text_encoding(text_queries, workdir / "text_encoding.json")
    return report
