"""Evaluate ProxyCLIP, a baseline or your own method on the OVSS benchmarks, on any number of devices.

    python scripts/test.py --data cityscapes --devices 4
    python scripts/test.py --data all --data-root /datasets --output-dir outputs/b16_dinob8
    python scripts/test.py --data voc21,voc20 --data-root /datasets                # one shared encoder pass
    python scripts/test.py --data all --method naclip                      # NACLIP, its own protocol
    python scripts/test.py --data all --method sclip --protocol proxyclip  # SCLIP under ProxyCLIP's protocol
    python scripts/test.py --data voc21 --method mymodule:factory          # your method (docs/plugin_example.py)

``--method``: proxyclip (default), maskclip, clip, sclip, naclip, clearclip, trident, corrclip (--masks), an installed
method (``--list``), or ``module:factory``: ``factory``
of ``module`` (importable from the current directory or installed) is called as
``factory(vocabulary=<list of synonym lists>, protocol=<Protocol>)`` and returns the segmenter.
``--protocol``: ``native`` (the method's own per-dataset setting; ProxyCLIP's for proxyclip/maskclip/clip and
plug-ins) or ``proxyclip`` (ProxyCLIP's setting for any method: the paper's Table 1 re-runs). The datamodule's
resize, the segmenter and results.json all read the same Protocol.

``--data-root``: the folder holding a benchmark's layout (e.g. .../VOCdevkit/VOC2012), or the data folder
holding the standard sub-paths (required form for ``all`` and lists). Default: $PROXYCLIP_DATA, else data/.
Metrics are dataset-level sums (MMSegmentation's IoU metric) and do not depend on the number of devices.
Benchmarks that list the same image files with the same test resize and encoder (VOC21/VOC20, Context60/59,
COCO-Object/COCO-Stuff) are evaluated in one pass: each window is encoded once (see ``shared_passes``).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Sequence

from datamodules import BENCHMARKS
from proxyclip_pl.cli import STRATEGIES, add_model_arguments, check_strategy, load_plugin, run_cli
from proxyclip_pl.commands.run_folder import (RUN_DIR_ENV, check_writable, default_output_dir, free_output_dir,
                                              prepare_output_dir, resume_command)
from proxyclip_pl.console import is_launcher, note, phase, quiet_libraries
from proxyclip_pl.native_protocols import PROTOCOL_NAMES
from proxyclip_pl.registry import method_sources
from proxyclip_pl.commands.jobs import (build_models, check_devices, data_keys, data_root_for, describe_model,
                                        folder_name, is_card, is_multi, make_job, registered, shared_passes, uses_vfm)
from proxyclip_pl.commands.passes import evaluate_pass
from proxyclip_pl.commands.run_record import check_resume_early
from proxyclip_pl.commands.table import benchmark_keys, list_entries, publishes, table_row



def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="proxyclip-test", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true",
                   help="list the methods and benchmarks (built-in or the installed distribution's) and exit")
    p.add_argument("--data",
                   help=f"benchmark key ({', '.join(benchmark_keys())}), 'all' (the first eight), "
                   "a dataset card path/to/dataset.json (any user dataset; see docs/datasets.md), or a "
                   "comma-separated list of them (e.g. voc21,voc20). Benchmarks on the same images share one encoder "
                   "pass; several benchmarks write to OUTPUT_DIR/<key>/")
    p.add_argument("--data-root", default=None, help="dataset folder (one benchmark) or data folder (all, lists)")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--accelerator", default="auto", choices=["cpu", "gpu", "cuda", "auto"])
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--strategy", default="auto",
                   help=f"one of {', '.join(STRATEGIES)}; 'auto' is 'ddp' (one process per device) for several devices")
    p.add_argument("--precision", default="32", choices=["32", "32-true", "16-mixed", "bf16-mixed"])
    p.add_argument("--output-dir", default=None,
                   help="results.json (and predictions) go here (default: a new folder "
                   "outputs/<method>_<benchmarks>_<date-time>, printed at the start and the end)")
    p.add_argument("--save-predictions", action="store_true", help="write DIR/predictions/<id>.png label maps")
    p.add_argument("--show-dir", default=None, help="write image | prediction | ground-truth panels here")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--text-cache-dir", default=None, help="text-embedding cache (default: ~/.cache/proxyclip_pl)")
    p.add_argument("--method", default="proxyclip",
                   help=f"{', '.join(method_sources())} (proxyclip-test --list), or module:factory "
                   "(default: %(default)s)")
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
    if args.data is None and not args.list:
        p.error("the following arguments are required: --data")
    if args.resume and args.overwrite:
        p.error("--resume and --overwrite exclude each other")
    return args


def validate(args: argparse.Namespace) -> list[str]:
    """Every check that needs no torch, model or dataset scan: benchmark names, dataset cards and roots, numbers,
    the method's form and the output folder. Returns the benchmark keys; raises a one-line user error."""
    from datamodules.custom import card_preset, read_card

    keys = data_keys(args)
    for key in keys:
        if is_card(key):
            spec = read_card(key)  # a bad card fails here, before any import of torch
            if args.data_root:
                spec["data_root"] = args.data_root
            root = card_preset(spec)[1]
            if not root.is_dir():
                raise FileNotFoundError(f"--data {key}: its data_root {root} does not exist")
        elif key not in BENCHMARKS:
            raise ValueError(f"unknown --data {key!r}; expected one of {', '.join(benchmark_keys())}, "
                             "'all', a dataset card (.json) or a comma-separated list")
        else:
            data_root_for(key, args)  # a bad --data-root fails before anything is built
    if len(set(keys)) != len(keys) or not keys:
        raise ValueError(f"--data {args.data!r}: list each benchmark once")
    if len({folder_name(key) for key in keys}) != len(keys):
        raise ValueError(f"--data {args.data!r}: two dataset cards have the same file name; their results would share "
                         "one folder (rename one)")
    if not registered(args.method) and (":" not in args.method or args.method.startswith(":")
                                        or args.method.endswith(":")):
        raise ValueError(f"unknown --method {args.method!r}; expected one of {', '.join(method_sources())} "
                         "(proxyclip-test --list) or module:factory")
    if args.pamr_steps is not None and args.pamr_steps < 0:
        raise ValueError(f"--pamr-steps must be >= 0, got {args.pamr_steps}")
    if args.devices < 1 or args.num_nodes < 1:
        raise ValueError(f"--devices and --num-nodes must be >= 1 (got {args.devices}, {args.num_nodes})")
    check_strategy(args.strategy)
    if args.output_dir is None:
        # started by SLURM (several tasks) or torchrun: every task runs this, each would choose its own folder
        external = int(os.environ.get("SLURM_NTASKS") or 1) > 1 or "TORCHELASTIC_RUN_ID" in os.environ
        if args.num_nodes > 1 or (external and not os.environ.get(RUN_DIR_ENV)):
            raise ValueError("processes started by SLURM, torchrun or on several nodes need --output-dir (a folder "
                             "every process writes to)")
        if args.resume:
            raise ValueError("--resume needs --output-dir: the folder of the run to continue")
        args.output_dir = str(default_output_dir(args.method, keys))
    out_root = Path(args.output_dir)
    check_writable(out_root)
    if args.show_dir:
        check_writable(Path(args.show_dir))
    suggestion = free_output_dir(args.method, keys)
    for key in keys:  # refuse (or clear) every previous run before evaluating anything
        prepare_output_dir(output_dir_of(args, key), args.resume, args.overwrite, suggestion)
    return keys


def output_dir_of(args: argparse.Namespace, key: str) -> Path:
    """Where one benchmark's results go: OUTPUT_DIR, or OUTPUT_DIR/<key>/ (a card: its file stem) when several
    benchmarks run."""
    return Path(args.output_dir) / folder_name(key) if is_multi(args) else Path(args.output_dir)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during the evaluation; the message is the command that continues the run."""


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, dict | None]:
    """The whole evaluation of parsed arguments (``argv``: as given, for the resume command).

    Returns:
        benchmark key -> its ``results.json`` content (``None`` in the processes of other ranks).
    Raises:
        RunInterrupted: on Ctrl-C, after every evaluated image has been recorded.
    """
    try:
        return _run(args, argv)
    finally:
        if is_launcher():  # the next run of this process (e.g. evaluate() again) chooses its own default folder
            os.environ.pop(RUN_DIR_ENV, None)


def _run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, dict | None]:
    start = time.perf_counter()
    keys = validate(args)
    out_root = Path(args.output_dir)
    note(f"proxyclip-test: {args.method} ({args.protocol} protocol) on {', '.join(keys)}; output: {out_root}")
    quiet_libraries()
    if not registered(args.method):
        load_plugin(args.method)  # fail on a bad module:factory before any process starts
    accelerator = args.accelerator = check_devices(args)  # results.json records the device actually used
    if registered(args.method):  # a wrong model name fails before the data are scanned
        from proxyclip_pl.cli import resolve_default_towers
        from proxyclip_pl.registry import method_spec
        from proxyclip_pl.towers import check_clip_name, check_vfm_name

        resolve_default_towers(args)
        check_clip_name(args.clip)
        if uses_vfm(args):
            check_vfm_name(args.vfm)
        if "sam" in method_spec(args.method).towers:
            check_vfm_name(args.sam)
    jobs = [make_job(key, args, output_dir_of(args, key)) for key in keys]
    if registered(args.method) and "masks" in method_spec(args.method).towers:
        from proxyclip_pl.region_masks import check_mask_source

        # before minutes of model building: every benchmark's cached-mask sub-folder exists and holds masks
        check_mask_source(args.masks, [dict(job.protocol.options).get("mask_folder") for job in jobs])
    check_resume_early(args, jobs)
    with phase(f"building {describe_model(args)}", "model ready"):
        build_models(args, jobs)  # once for the whole run
    all_results: dict[str, dict | None] = {}
    passes = shared_passes(jobs)
    sigint = signal.getsignal(signal.SIGINT)
    try:
        for k, group in enumerate(passes, 1):
            for job in group:
                job.out_dir.mkdir(parents=True, exist_ok=True)
            if is_multi(args):
                note(f"pass {k}/{len(passes)}: {', '.join(job.key for job in group)} ({group[0].num_samples} images)")
            results = evaluate_pass(group, args, accelerator)
            all_results.update(results or {job.key: None for job in group})
    except (KeyboardInterrupt, SystemExit) as exc:
        # Lightning turns Ctrl-C inside trainer.test into a graceful shutdown and sys.exit(1)
        if isinstance(exc, SystemExit) and exc.code != 1:
            raise
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores Ctrl-C from its interrupt on; a caller may go on
        raise RunInterrupted(f"interrupted: every image evaluated so far is recorded in {out_root}; to continue, "
                             f"run\n  {resume_command(argv, out_root)}") from None
    if is_multi(args) and all_results[keys[0]] is not None:
        mious = [all_results[k]["mIoU"] for k in keys]
        row = {**{k: m for k, m in zip(keys, mious)}, "avg": round(sum(mious) / len(mious), 2)}
        windows = [all_results[group[0].key]["windows_encoded"] for group in passes]
        resumed = {k: all_results[k].get("resumed_images", 0) for k in keys}
        summary = {**row, "passes": [[job.key for job in group] for group in passes],
                   # this run's encoder work: images taken from the records of an earlier run were not encoded again
                   "windows_encoded": None if None in windows else sum(windows),
                   "resumed_images": resumed}
        (out_root / "summary.json").write_text(json.dumps(summary, indent=2))
        print(table_row(args.method, args.protocol, row, reported=args.data == "all" and publishes(args, jobs)))
        taken = sum(resumed.values())
        print(f"{len(passes)} encoder pass(es) for {len(keys)} benchmark(s); windows encoded in this run: "
              f"{summary['windows_encoded']}" + (f" ({taken} image results taken from records)" if taken else ""))
    note(f"done in {time.perf_counter() - start:.1f} s; results in {out_root}"
         + ("/<benchmark>/results.json and summary.json" if is_multi(args) else "/results.json"))
    return all_results


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.list:
        print(list_entries())
        return 0
    try:
        run(args, argv)
    except RunInterrupted as exc:
        note(str(exc))
        return 130
    return 0


def cli() -> None:
    """Console entry point ``proxyclip-test`` (and ``python scripts/test.py``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
