#!/usr/bin/env python
"""Evaluate ProxyCLIP on the OVSS benchmarks (the paper's protocol), on any number of devices.

    python scripts/test.py --data cityscapes --devices 4
    python scripts/test.py --data all --data-root /datasets --output-dir outputs/b16_dinob8

``--data-root``: the folder holding a benchmark's layout (e.g. .../VOCdevkit/VOC2012), or the data folder
holding the standard sub-paths (required form for ``all``). Default: $PROXYCLIP_DATA, else data/.
Metrics are dataset-level sums (MMSegmentation's IoU metric) and do not depend on the number of devices.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxyclip_pl.cli import add_model_arguments, model_kwargs, run_cli  # noqa: E402

#: Launchers whose results are checked identical by the tests; "auto" is "ddp" for several devices.
STRATEGIES = ("auto", "ddp", "ddp_spawn")
#: Table 1 column order.
TABLE_ORDER = ["voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help=f"benchmark key ({', '.join(TABLE_ORDER)}) or 'all'")
    p.add_argument("--data-root", default=None, help="dataset folder (one benchmark) or data folder (all)")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--accelerator", default="auto", choices=["cpu", "gpu", "cuda", "auto"])
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--strategy", default="auto",
                   help=f"one of {', '.join(STRATEGIES)}; 'auto' is 'ddp' (one process per device) for several devices")
    p.add_argument("--precision", default="32", choices=["32", "32-true", "16-mixed", "bf16-mixed"])
    p.add_argument("--output-dir", default="outputs", help="results.json (and predictions) go here")
    p.add_argument("--save-predictions", action="store_true", help="write DIR/predictions/<id>.png label maps")
    p.add_argument("--show-dir", default=None, help="write image | prediction | ground-truth panels here")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--text-cache-dir", default=None, help="text-embedding cache (default: ~/.cache/proxyclip_pl)")
    add_model_arguments(p)
    return p.parse_args(argv)


def check_devices(args: argparse.Namespace) -> str:
    """Resolve the accelerator and reject impossible device counts before Lightning starts processes."""
    import torch

    if args.devices < 1 or args.num_nodes < 1:
        raise ValueError(f"--devices and --num-nodes must be >= 1 (got {args.devices}, {args.num_nodes})")
    if args.strategy not in STRATEGIES:
        raise ValueError(f"--strategy {args.strategy!r} is not supported; use one of {', '.join(STRATEGIES)}")
    accelerator = {"cuda": "gpu", "auto": "gpu" if torch.cuda.is_available() else "cpu"}.get(args.accelerator, args.accelerator)
    available = torch.cuda.device_count() if accelerator == "gpu" else (os.cpu_count() or 1)
    if args.devices > available:
        kind = "GPUs" if accelerator == "gpu" else "CPU cores"
        raise ValueError(f"--devices {args.devices} requested but only {available} {kind} are available on this node")
    return accelerator


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_probe_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"output dir {folder} is not writable: {exc.strerror or exc}") from None


def data_root_for(key: str, args: argparse.Namespace) -> Path | None:
    from datamodules import BENCHMARKS

    if args.data_root is None:
        return None  # the datamodule's default: $PROXYCLIP_DATA/<sub path> or data/<sub path>
    root = Path(args.data_root)
    if not root.is_dir():
        raise FileNotFoundError(f"--data-root {root} does not exist")
    nested = root / BENCHMARKS[key].sub_path
    if args.data == "all" or (nested.is_dir() and not (root / BENCHMARKS[key].img_dir).is_dir()):
        return nested  # a data folder holding the standard sub-path
    return root


def configuration(args: argparse.Namespace, key: str, model, world_size: int) -> dict[str, Any]:
    import lightning
    import numpy
    import open_clip
    import timm
    import torch
    import torchmetrics

    import proxyclip_pl

    return {
        "clip": args.clip,
        "clip_weights": args.clip_weights or "(preset tag)",
        "vfm": args.vfm,
        "vfm_weights": args.vfm_weights,
        "vfm_kind": model.vfm_kind,
        "attention": model.attention,
        "seed": args.seed,
        "beta": model.beta,
        "gamma": model.gamma,
        "logit_scale": model.logit_scale,
        "prob_thd": model.prob_thd,
        "short_side": model.short_side,
        "long_side_cap": model.long_side_cap,
        "slide_crop": model.slide_crop,
        "slide_stride": model.slide_stride,
        "window_batch_size": model.effective_window_batch_size,
        "num_queries": len(model.queries),
        "precision": args.precision,
        "world_size": world_size,
        "num_nodes": args.num_nodes,
        "versions": {
            "proxyclip_pl": proxyclip_pl.__version__,
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            "torchmetrics": torchmetrics.__version__,
            "open_clip": open_clip.__version__,
            "timm": timm.__version__,
            "numpy": numpy.__version__,
        },
    }


def evaluate(key: str, args: argparse.Namespace, accelerator: str, out_dir: Path) -> dict[str, Any] | None:
    """Evaluate one benchmark; returns the results on global rank 0 (None elsewhere)."""
    import lightning.pytorch as pl
    import torch

    from datamodules import BENCHMARKS, build_datamodule
    from proxyclip_pl import build_proxyclip, load_vocabulary
    from proxyclip_pl.evaluation import ImagesPerSecondBar, ProxyCLIPEvaluator, format_results_table, read_results

    preset = BENCHMARKS[key]
    dm = build_datamodule(key, data_root=data_root_for(key, args), num_workers=args.num_workers)
    dm.setup("test")
    if args.limit is not None:
        dm.test_dataset = torch.utils.data.Subset(dm.test_dataset, range(min(args.limit, len(dm.test_dataset))))
    num_samples = len(dm.test_dataset)
    ranks = args.devices * args.num_nodes
    if ranks > num_samples:
        # A rank without images never reaches the collective metric reduction (Lightning skips its
        # loop), so the others would wait for it until the timeout: refuse before any process starts.
        raise ValueError(f"{key}: {num_samples} image(s) for {ranks} processes (--devices {args.devices} x "
                         f"--num-nodes {args.num_nodes}); every process needs at least one image: use at most "
                         f"{num_samples} device(s){' or a larger --limit' if args.limit is not None else ''}")

    model = build_proxyclip(
        load_vocabulary(preset.vocabulary_file), prob_thd=preset.prob_thd, short_side=preset.short_side,
        slide_crop=preset.crop_size, slide_stride=preset.stride, text_cache_dir=args.text_cache_dir,
        **model_kwargs(args),
    )
    metrics_file = out_dir / ".metrics.json"
    metrics_file.unlink(missing_ok=True)  # never read a previous run's numbers
    module = ProxyCLIPEvaluator(
        model, dm.class_names, num_samples,
        prediction_dir=out_dir / "predictions" if args.save_predictions else None,
        show_dir=Path(args.show_dir) / key if args.show_dir and args.data == "all" else args.show_dir,
        results_file=metrics_file,
    )
    strategy = args.strategy
    if strategy == "auto" and args.devices * args.num_nodes > 1:
        strategy = "ddp"
    trainer = pl.Trainer(
        accelerator=accelerator, devices=args.devices, num_nodes=args.num_nodes, strategy=strategy,
        precision=args.precision, logger=False, enable_checkpointing=False, enable_model_summary=False,
        callbacks=[ImagesPerSecondBar()], inference_mode=True,
    )
    start = time.perf_counter()
    trainer.test(module, datamodule=dm, verbose=False)
    seconds = time.perf_counter() - start
    if not trainer.is_global_zero:
        return None
    results = read_results(metrics_file)
    metrics_file.unlink()
    if results["num_images"] != num_samples:
        raise RuntimeError(f"evaluated {results['num_images']} images, expected {num_samples}")
    results = {
        "dataset": key,
        "num_images": results["num_images"],
        "mIoU": results["mIoU"],
        "aAcc": results["aAcc"],
        "mAcc": results["mAcc"],
        "per_class_iou": results["per_class_iou"],
        "per_class_acc": results["per_class_acc"],
        "seconds": round(seconds, 2),
        "images_per_second": round(num_samples / seconds, 3),
        "data_root": str(dm.data_root),
        "config": configuration(args, key, model, trainer.world_size),
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    print(format_results_table(results, title=f"== {key} =="))
    print(f"results written to {out_dir / 'results.json'}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from datamodules import BENCHMARKS

    keys = TABLE_ORDER if args.data == "all" else [args.data]
    if args.data != "all" and args.data not in BENCHMARKS:
        raise ValueError(f"unknown --data {args.data!r}; expected one of {', '.join(TABLE_ORDER)} or 'all'")
    accelerator = check_devices(args)
    out_root = Path(args.output_dir)
    check_writable(out_root)
    if args.show_dir:
        check_writable(Path(args.show_dir))
    for key in keys:
        data_root_for(key, args)  # fail on a bad --data-root before any model is built
    warnings.filterwarnings("ignore", ".*does not have many workers.*")

    all_results = {}
    for key in keys:
        out_dir = out_root / key if args.data == "all" else out_root
        out_dir.mkdir(parents=True, exist_ok=True)
        all_results[key] = evaluate(key, args, accelerator, out_dir)
    if args.data == "all" and all_results[keys[0]] is not None:
        mious = [all_results[k]["mIoU"] for k in keys]
        row = {**{k: m for k, m in zip(keys, mious)}, "avg": round(sum(mious) / len(mious), 2)}
        (out_root / "summary.json").write_text(json.dumps(row, indent=2))
        print(" | ".join(f"{k:>11}" for k in row))
        print(" | ".join(f"{v:>11.2f}" for v in row.values()))
    return 0


if __name__ == "__main__":
    run_cli(main)
