#!/usr/bin/env python
"""Evaluate ProxyCLIP, a baseline or your own method on the OVSS benchmarks, on any number of devices.

    python scripts/test.py --data cityscapes --devices 4
    python scripts/test.py --data all --data-root /datasets --output-dir outputs/b16_dinob8
    python scripts/test.py --data all --method naclip                      # NACLIP, its own protocol
    python scripts/test.py --data all --method sclip --protocol proxyclip  # SCLIP under ProxyCLIP's protocol
    python scripts/test.py --data voc21 --method mymodule:factory          # your method (docs/plugin_example.py)

``--method``: proxyclip (default), maskclip, clip, sclip, naclip, clearclip, or ``module:factory``: ``factory``
of ``module`` (importable from the current directory or installed) is called as
``factory(vocabulary=<list of synonym lists>, protocol=<Protocol>)`` and returns the segmenter.
``--protocol``: ``native`` (the method's own per-dataset setting; ProxyCLIP's for proxyclip/maskclip/clip and
plug-ins) or ``proxyclip`` (ProxyCLIP's setting for any method: the paper's Table 1 re-runs). The datamodule's
resize, the segmenter and results.json all read the same Protocol.

``--data-root``: the folder holding a benchmark's layout (e.g. .../VOCdevkit/VOC2012), or the data folder
holding the standard sub-paths (required form for ``all``). Default: $PROXYCLIP_DATA, else data/.
Metrics are dataset-level sums (MMSegmentation's IoU metric) and do not depend on the number of devices.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxyclip_pl.cli import add_model_arguments, load_plugin, model_kwargs, run_cli  # noqa: E402
from proxyclip_pl.native_protocols import BUILTIN_METHODS, PROTOCOL_NAMES  # noqa: E402

#: Launchers whose results are checked identical by the tests; "auto" is "ddp" for several devices.
STRATEGIES = ("auto", "ddp", "ddp_spawn")
#: Table 1 column order.
TABLE_ORDER = ["voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k"]
#: Further benchmarks (``--data <key>``, not part of ``all``).
EXTRA_BENCHMARKS = ["ade847", "context459"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True,
                   help=f"benchmark key ({', '.join(TABLE_ORDER + EXTRA_BENCHMARKS)}), 'all' (the first eight) or "
                   "a dataset card path/to/dataset.json (any user dataset; see docs/datasets_extra.md)")
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
    p.add_argument("--method", default="proxyclip",
                   help=f"{', '.join(BUILTIN_METHODS)} or module:factory (default: %(default)s)")
    p.add_argument("--protocol", default="native", choices=list(PROTOCOL_NAMES),
                   help="native: the method's own per-dataset setting; proxyclip: ProxyCLIP's (default: %(default)s)")
    p.add_argument("--pamr-steps", type=int, default=None, help="PAMR steps, overriding the protocol's (0: off)")
    p.add_argument("--per-image", action="store_true",
                   help="also write per_image.csv (id, pixels scored, pixel accuracy, per-image mIoU, GT classes)")
    p.add_argument("--ignore-index", type=int, default=None,
                   help="label value the metric ignores (default: the benchmark's, 255). ADE-847 / PC-459 are "
                   "published with 255 (mmseg's default), which ignores class 255 and scores the predictions "
                   "on their unlabeled (65535) pixels; --ignore-index 65535 gives the corrected score")
    p.add_argument("--resume", action="store_true",
                   help="continue the run recorded in --output-dir (records/): recorded images are not evaluated again")
    p.add_argument("--overwrite", action="store_true",
                   help="discard a previous run in --output-dir (results.json, records/) and start afresh")
    add_model_arguments(p)
    args = p.parse_args(argv)
    if args.resume and args.overwrite:
        p.error("--resume and --overwrite exclude each other")
    return args


def is_card(key: str) -> bool:
    """``--data path/to/dataset.json``: a user dataset described by a dataset card."""
    return key.endswith(".json")


def resolve_protocol(args: argparse.Namespace, key: str, preset=None):
    """The Protocol of ``--method`` on ``key`` under ``--protocol``, with ``--pamr-steps`` applied.

    A plug-in factory may carry ``native_protocols`` (dataset key -> Protocol) for its native protocol.
    A dataset card (``preset`` given) has one protocol for every method: its short side, windows and
    ``prob_thd`` with ProxyCLIP's logit scale, no area filter and no PAMR."""
    from proxyclip_pl.native_protocols import Protocol, protocol_for

    if is_card(key):
        protocol = Protocol(preset.short_side, 2048, preset.crop_size, preset.stride, 40.0, preset.prob_thd, None, 0)
        if args.pamr_steps is not None:
            protocol = dataclasses.replace(protocol, pamr_steps=args.pamr_steps)
        return protocol
    protocol = protocol_for(args.method, key, args.protocol)
    if args.protocol == "native" and args.method not in BUILTIN_METHODS:
        protocol = (getattr(load_plugin(args.method), "native_protocols", None) or {}).get(key, protocol)
    if args.pamr_steps is not None:
        protocol = dataclasses.replace(protocol, pamr_steps=args.pamr_steps)
    return protocol


def build_model(args: argparse.Namespace, vocabulary, protocol):
    """The segmenter of ``--method`` under ``protocol``."""
    from proxyclip_pl import build_segmenter

    if args.method not in BUILTIN_METHODS:
        return load_plugin(args.method)(vocabulary=vocabulary, protocol=protocol)
    kwargs = model_kwargs(args)
    if args.method != "proxyclip":
        if kwargs.pop("attention") != "proxy":
            raise ValueError(f"--attention is a ProxyCLIP option; --method {args.method} has none")
        kwargs.pop("vfm"), kwargs.pop("vfm_weights")
    return build_segmenter(args.method, vocabulary, protocol, text_cache_dir=args.text_cache_dir, **kwargs)


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


def configuration(args: argparse.Namespace, key: str, model, protocol, world_size: int) -> dict[str, Any]:
    import lightning
    import numpy
    import open_clip
    import timm
    import torch
    import torchmetrics

    import proxyclip_pl

    builtin = args.method in BUILTIN_METHODS
    attr = lambda name, default=None: getattr(model, name, default)  # noqa: E731  (plug-ins may lack them)
    window_batch_size = attr("effective_window_batch_size")
    queries = attr("queries")
    return {
        "method": args.method,
        "protocol": args.protocol,
        "protocol_settings": dataclasses.asdict(protocol),
        "pamr_steps_override": args.pamr_steps,
        "segmenter": f"{type(model).__module__}.{type(model).__qualname__}",
        "clip": args.clip if builtin else None,
        "clip_weights": (args.clip_weights or "(preset tag)") if builtin else None,
        "vfm": args.vfm if args.method == "proxyclip" else None,
        "vfm_weights": args.vfm_weights if args.method == "proxyclip" else None,
        "vfm_kind": attr("vfm_kind"),
        "attention": attr("attention"),
        "seed": args.seed if builtin else None,
        "beta": attr("beta"),
        "gamma": attr("gamma"),
        "logit_scale": attr("logit_scale", protocol.logit_scale),
        "prob_thd": attr("prob_thd", protocol.prob_thd),
        "area_thd": attr("area_thd", protocol.area_thd),
        "pamr_steps": attr("pamr_steps", protocol.pamr_steps),
        "short_side": protocol.short_side,
        "long_side_cap": protocol.long_side_cap,
        "slide_crop": attr("slide_crop", protocol.slide_crop),
        "slide_stride": attr("slide_stride", protocol.slide_stride),
        "window_batch_size": window_batch_size,
        "num_queries": len(queries) if queries is not None else None,
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


def fingerprint(args: argparse.Namespace, key: str, model, protocol, dataset, data_root, ignore_index: int,
                mmseg_histc: bool, class_names: Sequence[str]) -> dict[str, Any]:
    """What a resumed run must share with the recorded one: ``configuration()`` without the process count (records
    are keyed by image, so the device count may change), plus the dataset (its image ids) and the metric settings."""
    import hashlib

    config = configuration(args, key, model, protocol, 1)
    for name in ("world_size", "num_nodes"):
        config.pop(name)
    ids = dataset_ids(dataset)
    return {**config, "dataset": key if not is_card(key) else str(Path(key).resolve()), "data_root": str(data_root),
            "num_images": len(ids), "image_ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
            "ignore_index": ignore_index, "mmseg_histc": bool(mmseg_histc),
            "class_names_sha256": hashlib.sha256("\n".join(class_names).encode()).hexdigest()}


def dataset_ids(dataset) -> list[str]:
    """Image ids of a test dataset or of a ``Subset`` of one, in dataset order."""
    import torch

    if isinstance(dataset, torch.utils.data.Subset):
        base = dataset_ids(dataset.dataset)
        return [base[i] for i in dataset.indices]
    return [str(i) for i in dataset.ids]


def previous_run(out_dir: Path) -> list[str]:
    """What in ``out_dir`` belongs to a previous run (results.json, record files)."""
    from proxyclip_pl.records import RECORDS_DIR

    found = ["results.json"] if (out_dir / "results.json").exists() else []
    records = out_dir / RECORDS_DIR
    if records.is_dir() and any(records.iterdir()):
        found.append(f"{RECORDS_DIR}/")
    return found


def prepare_output_dir(out_dir: Path, args: argparse.Namespace) -> None:
    """Refuse to mix with a previous run unless --resume; --overwrite removes it. Only the launching process acts:
    the processes Lightning starts for the other ranks re-run this script and must neither refuse nor delete."""
    import shutil

    from proxyclip_pl.records import RECORDS_DIR

    if os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0":
        return
    found = previous_run(out_dir)
    if not found or args.resume:
        return
    if not args.overwrite:
        raise ValueError(f"output dir {out_dir} holds a previous run ({', '.join(found)}); "
                         "pass --resume to continue it or --overwrite to start afresh")
    (out_dir / "results.json").unlink(missing_ok=True)
    shutil.rmtree(out_dir / RECORDS_DIR, ignore_errors=True)


def evaluate(key: str, args: argparse.Namespace, accelerator: str, out_dir: Path) -> dict[str, Any] | None:
    """Evaluate one benchmark; returns the results on global rank 0 (None elsewhere)."""
    import lightning.pytorch as pl
    import torch

    from datamodules import BENCHMARKS, build_datamodule
    from proxyclip_pl import load_vocabulary
    from proxyclip_pl.evaluation import ImagesPerSecondBar, SegmenterEvaluator, format_results_table, read_results

    if is_card(key):
        preset = build_datamodule(key, data_root=args.data_root).preset
    else:
        preset = BENCHMARKS[key]
    protocol = resolve_protocol(args, key, preset)
    # the datamodule resizes with the protocol's short side and long-side cap
    dm = build_datamodule(key, data_root=args.data_root if is_card(key) else data_root_for(key, args),
                          num_workers=args.num_workers, short_side=protocol.short_side,
                          long_cap=protocol.long_side_cap)
    dm.setup("test")
    if args.limit is not None:
        dm.test_dataset = torch.utils.data.Subset(dm.test_dataset, range(min(args.limit, len(dm.test_dataset))))
    num_samples = len(dm.test_dataset)

    if preset.vocabulary is not None:  # a user dataset: the card's classes and synonyms
        from proxyclip_pl.vocabulary import validate_vocabulary

        vocabulary = [list(names) for names in preset.vocabulary]
        validate_vocabulary(vocabulary)
    else:
        vocabulary = load_vocabulary(preset.vocabulary_file)
    model = build_model(args, vocabulary, protocol)
    metrics_file = out_dir / ".metrics.json"
    metrics_file.unlink(missing_ok=True)  # never read a previous run's numbers
    ignore_index = preset.ignore_index if args.ignore_index is None else args.ignore_index

    from proxyclip_pl.records import RECORDS_DIR, check_fingerprint, read_records, sum_states

    fp = fingerprint(args, key, model, protocol, dm.test_dataset, dm.data_root, ignore_index, preset.mmseg_histc,
                     dm.class_names)
    recorded: dict[int, dict[str, Any]] = {}
    if args.resume:
        headers, recorded, dropped = read_records(out_dir / RECORDS_DIR)
        check_fingerprint(headers, fp)
        recorded = {i: r for i, r in recorded.items() if 0 <= i < num_samples}
        if dropped and os.environ.get("LOCAL_RANK", "0") == "0":
            print(f"resume: ignored {dropped} torn or corrupt record line(s)", file=sys.stderr)
    remaining = [i for i in range(num_samples) if i not in recorded]
    ranks = args.devices * args.num_nodes
    if remaining and ranks > len(remaining):
        # A rank without images never reaches the collective metric reduction (Lightning skips its
        # loop), so the others would wait for it until the timeout: refuse before any process starts.
        what = f"{len(remaining)} image(s) left to evaluate" if recorded else f"{num_samples} image(s)"
        raise ValueError(f"{key}: {what} for {ranks} processes (--devices {args.devices} x "
                         f"--num-nodes {args.num_nodes}); every process needs at least one image: use at most "
                         f"{len(remaining)} device(s){' or a larger --limit' if args.limit is not None and not recorded else ''}")
    prior, prior_rows = None, []
    if recorded:
        from proxyclip_pl.metrics import SegmentationIoU

        like = SegmentationIoU(len(dm.class_names), num_samples=num_samples, ignore_index=ignore_index,
                               mmseg_histc=preset.mmseg_histc, confusion=True)
        prior = sum_states(recorded.values(), {name: getattr(like, name) for name in like._defaults})
        prior_rows = [recorded[i]["row"] for i in sorted(recorded) if recorded[i].get("row") is not None]
        if args.per_image and len(prior_rows) != len(recorded):
            raise ValueError("cannot resume with --per-image: the recorded run did not keep per-image rows")
        if len(remaining) < num_samples:
            dm.test_dataset = torch.utils.data.Subset(dm.test_dataset, remaining)
    module = SegmenterEvaluator(
        model, dm.class_names, num_samples,
        prediction_dir=out_dir / "predictions" if args.save_predictions else None,
        show_dir=Path(args.show_dir) / key if args.show_dir and args.data == "all" else args.show_dir,
        results_file=metrics_file, ignore_index=ignore_index, mmseg_histc=preset.mmseg_histc,
        confusion_file=out_dir / "confusion.npy", per_image_file=out_dir / "per_image.csv" if args.per_image else None,
        record_dir=out_dir / RECORDS_DIR, fingerprint=fp, prior=prior, prior_rows=prior_rows,
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
    if remaining:
        trainer.test(module, datamodule=dm, verbose=False)
    else:  # every image is recorded: the results are the records' sums
        if not trainer.is_global_zero:
            return None
        module.metric.reset()
        module.add_prior()
        module.metric._update_count = 1  # the states hold the records' sums (no update() in this process)
        module.publish(True)
    seconds = time.perf_counter() - start
    if not trainer.is_global_zero:
        return None
    results = read_results(metrics_file)
    metrics_file.unlink()
    if results["num_images"] != num_samples:
        raise RuntimeError(f"evaluated {results['num_images']} images, expected {num_samples}")
    results = {
        "dataset": preset.key,
        **({"dataset_card": str(Path(key).resolve())} if is_card(key) else {}),
        "num_images": results["num_images"],
        "mIoU": results["mIoU"],
        "aAcc": results["aAcc"],
        "mAcc": results["mAcc"],
        "per_class_iou": results["per_class_iou"],
        "per_class_acc": results["per_class_acc"],
        "ignore_index": ignore_index,
        "metric_arithmetic": "mmseg_histc" if preset.mmseg_histc else "strict",
        "seconds": round(seconds, 2),
        "images_per_second": round(len(remaining) / seconds, 3),
        **({"resumed_images": len(recorded)} if recorded else {}),
        "data_root": str(dm.data_root),
        "config": configuration(args, key, model, protocol, trainer.world_size),
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    print(format_results_table(results, title=f"== {key} ({args.method}, {args.protocol} protocol) =="))
    print(f"results written to {out_dir / 'results.json'}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from datamodules import BENCHMARKS

    keys = TABLE_ORDER if args.data == "all" else [args.data]
    if is_card(args.data):
        if not Path(args.data).is_file():
            raise FileNotFoundError(f"--data {args.data}: dataset card not found")
    elif args.data != "all" and args.data not in BENCHMARKS:
        raise ValueError(f"unknown --data {args.data!r}; expected one of "
                         f"{', '.join(TABLE_ORDER + EXTRA_BENCHMARKS)} or 'all'")
    if args.method not in BUILTIN_METHODS:
        load_plugin(args.method)  # fail on a bad module:factory before any process starts
    if args.pamr_steps is not None and args.pamr_steps < 0:
        raise ValueError(f"--pamr-steps must be >= 0, got {args.pamr_steps}")
    accelerator = check_devices(args)
    out_root = Path(args.output_dir)
    check_writable(out_root)
    if args.show_dir:
        check_writable(Path(args.show_dir))
    for key in keys:
        if is_card(key):  # fail on a bad card before any model is built
            from datamodules import build_datamodule

            build_datamodule(key, data_root=args.data_root)
        else:
            data_root_for(key, args)  # fail on a bad --data-root before any model is built
    warnings.filterwarnings("ignore", ".*does not have many workers.*")

    for key in keys:  # refuse (or clear) every previous run before evaluating anything
        prepare_output_dir(out_root / key if args.data == "all" else out_root, args)
    all_results = {}
    for key in keys:
        out_dir = out_root / key if args.data == "all" else out_root
        out_dir.mkdir(parents=True, exist_ok=True)
        all_results[key] = evaluate(key, args, accelerator, out_dir)
    if args.data == "all" and all_results[keys[0]] is not None:
        mious = [all_results[k]["mIoU"] for k in keys]
        row = {**{k: m for k, m in zip(keys, mious)}, "avg": round(sum(mious) / len(mious), 2)}
        (out_root / "summary.json").write_text(json.dumps(row, indent=2))
        print(table_row(args.method, args.protocol, row))
    return 0


def table_row(method: str, protocol: str, row: dict[str, float]) -> str:
    """Table 1 row of ``method`` (mIoU per benchmark and the average), with the published row under it
    when the method's native protocol was run and its paper/README numbers are known."""
    from proxyclip_pl.native_protocols import REPORTED_MIOU

    name = f"{method} ({protocol})"
    width = max(len(name), 10)
    lines = [f"{'':<{width}} | " + " | ".join(f"{k:>11}" for k in row),
             f"{name:<{width}} | " + " | ".join(f"{v:>11.2f}" for v in row.values())]
    if protocol == "native" and method in REPORTED_MIOU:
        reported = [REPORTED_MIOU[method].miou.get(k) for k in TABLE_ORDER]
        cells = [f"{v:>11.2f}" if v is not None else f"{'-':>11}" for v in reported]
        known = [v for v in reported if v is not None]
        cells.append(f"{sum(known) / len(known):>11.2f}" if len(known) == len(reported) else f"{'-':>11}")
        lines.append(f"{'reported':<{width}} | " + " | ".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main)
