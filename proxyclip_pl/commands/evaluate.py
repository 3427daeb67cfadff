"""Evaluate ProxyCLIP, a baseline or your own method on the OVSS benchmarks, on any number of devices.

    python scripts/test.py --data cityscapes --devices 4
    python scripts/test.py --data all --data-root /datasets --output-dir outputs/b16_dinob8
    python scripts/test.py --data voc21,voc20 --data-root /datasets                # one shared encoder pass
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
holding the standard sub-paths (required form for ``all`` and lists). Default: $PROXYCLIP_DATA, else data/.
Metrics are dataset-level sums (MMSegmentation's IoU metric) and do not depend on the number of devices.
Benchmarks that list the same image files with the same test resize and encoder (VOC21/VOC20, Context60/59,
COCO-Object/COCO-Stuff) are evaluated in one pass: each window is encoded once (see ``shared_passes``).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import proxyclip_pl
from datamodules import BENCHMARKS
from proxyclip_pl.cli import add_model_arguments, load_plugin, model_kwargs, run_cli
from proxyclip_pl.commands.run_folder import (check_writable, default_output_dir, free_output_dir, prepare_output_dir,
                                              resume_command)
from proxyclip_pl.console import note, phase, quiet_libraries
from proxyclip_pl.registry import method_sources
from proxyclip_pl.native_protocols import (DATASETS, EXTRA_DATASETS, PROTOCOL_NAMES,
                                           Protocol, protocol_for)

#: Launchers whose results are checked identical by the tests; "auto" is "ddp" for several devices.
STRATEGIES = ("auto", "ddp", "ddp_spawn")
#: Table 1 column order (``--data all``).
TABLE_ORDER = list(DATASETS)
#: Further benchmarks (``--data <key>``, not part of ``all``).
EXTRA_BENCHMARKS = list(EXTRA_DATASETS)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="proxyclip-test", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true",
                   help="list the methods and benchmarks (built-in or the installed distribution's) and exit")
    p.add_argument("--data",
                   help=f"benchmark key ({', '.join(TABLE_ORDER + EXTRA_BENCHMARKS)}), 'all' (the first eight), "
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


def is_card(key: str) -> bool:
    """``--data path/to/dataset.json``: a user dataset described by a dataset card."""
    return key.endswith(".json")


def resolve_protocol(args: argparse.Namespace, key: str, preset=None):
    """The Protocol of ``--method`` on ``key`` under ``--protocol``, with ``--pamr-steps`` applied.

    A plug-in factory may carry ``native_protocols`` (dataset key -> Protocol) for its native protocol.
    A dataset card (``preset`` given) has one protocol for every method: its short side, windows and
    ``prob_thd`` with ProxyCLIP's logit scale, no area filter and no PAMR."""
    if is_card(key):
        protocol = Protocol(preset.short_side, 2048, preset.crop_size, preset.stride, 40.0, preset.prob_thd, None, 0)
        if args.pamr_steps is not None:
            protocol = dataclasses.replace(protocol, pamr_steps=args.pamr_steps)
        return protocol
    protocol = protocol_for(args.method, key, args.protocol)
    if args.protocol == "native" and not registered(args.method):
        protocol = (getattr(load_plugin(args.method), "native_protocols", None) or {}).get(key, protocol)
    if args.pamr_steps is not None:
        protocol = dataclasses.replace(protocol, pamr_steps=args.pamr_steps)
    return protocol


def check_devices(args: argparse.Namespace) -> str:
    """Resolve the accelerator and reject more devices than this node has, before Lightning starts processes."""
    import torch

    accelerator = {"cuda": "gpu", "auto": "gpu" if torch.cuda.is_available() else "cpu"}.get(args.accelerator, args.accelerator)
    available = torch.cuda.device_count() if accelerator == "gpu" else (os.cpu_count() or 1)
    if args.devices > available:
        kind = "GPUs" if accelerator == "gpu" else "CPU cores"
        raise ValueError(f"--devices {args.devices} requested but only {available} {kind} are available on this node")
    return accelerator


def data_root_for(key: str, args: argparse.Namespace) -> Path | None:
    if args.data_root is None:
        return None  # the datamodule's default: $PROXYCLIP_DATA/<sub path> or data/<sub path>
    root = Path(args.data_root)
    if not root.is_dir():
        raise FileNotFoundError(f"--data-root {root} does not exist")
    nested = root / BENCHMARKS[key].sub_path
    if is_multi(args) or (nested.is_dir() and not (root / BENCHMARKS[key].img_dir).is_dir()):
        return nested  # a data folder holding the standard sub-path
    return root


def tower_identities(args: argparse.Namespace) -> dict[str, Any]:
    """The towers of a built-in method as given and as resolved: ``clip_weights`` is the weights source actually
    used (the preset's tag when none is given, ``random`` for a model-config JSON), and every ``*_id`` identifies
    content (a config or checkpoint file by the sha256 of its bytes, ``random`` weights by their seed, a tag by
    name), as the text cache does (:func:`proxyclip_pl.text_cache.weights_identity`)."""
    from proxyclip_pl.towers import resolve_clip_weights
    from proxyclip_pl.text_cache import file_fingerprint, weights_identity

    def config_id(name: str) -> str:
        return f"sha256:{file_fingerprint(name)}" if name.endswith(".json") and Path(name).is_file() else name

    clip_weights = resolve_clip_weights(args.clip, args.clip_weights)
    towers = {"clip": args.clip, "clip_id": config_id(args.clip), "clip_weights": clip_weights,
              "clip_weights_id": weights_identity(clip_weights, args.seed)}
    if uses_vfm(args):
        towers.update(vfm=args.vfm, vfm_id=config_id(args.vfm), vfm_weights=args.vfm_weights,
                      vfm_weights_id=weights_identity(args.vfm_weights, args.seed))
    else:
        towers.update(vfm=None, vfm_id=None, vfm_weights=None, vfm_weights_id=None)
    return towers


def model_fingerprint(model) -> str | None:
    """A plug-in's own fingerprint of what its outputs depend on (``state_fingerprint()``; every
    :class:`~proxyclip_pl.Segmenter` has one: a hash of its weights and text embeddings), or ``None``."""
    method = getattr(model, "state_fingerprint", None)
    return str(method()) if callable(method) else None


def configuration(args: argparse.Namespace, job: "Job", world_size: int) -> dict[str, Any]:
    import lightning
    import numpy
    import open_clip
    import timm
    import torch
    import torchmetrics

    builtin = registered(args.method)
    model, protocol = job.model, job.protocol

    def attr(name: str, default: Any = None) -> Any:
        return getattr(model, name, default)  # plug-ins may lack them

    towers = tower_identities(args) if builtin else dict.fromkeys(
        ("clip", "clip_id", "clip_weights", "clip_weights_id", "vfm", "vfm_id", "vfm_weights", "vfm_weights_id"))
    return {
        "method": args.method,
        "protocol": args.protocol,
        "protocol_settings": dataclasses.asdict(protocol),
        "pamr_steps_override": args.pamr_steps,
        "segmenter": f"{type(model).__module__}.{type(model).__qualname__}",
        **towers,
        "model_fingerprint": None if builtin else model_fingerprint(model),
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
        "vocabulary": job.vocab.record(),
        "window_batch_size": attr("effective_window_batch_size"),
        "precision": args.precision,
        "accelerator": args.accelerator,
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


#: ``configuration()`` fields a resumed run may change: how it is run (process count, windows per encoder call,
#: device; the results do not depend on them: batch invariance and 1-vs-2-process equality are tested) and the
#: names of the towers' files and weights, whose content the ``*_id`` fields identify.
NOT_FINGERPRINTED = ("world_size", "num_nodes", "window_batch_size", "accelerator", "clip", "clip_weights", "vfm",
                     "vfm_weights", "seed")


#: Fingerprint fields read from the built segmenter (a resume is checked without them before the model is built).
MODEL_FIELDS = ("segmenter", "model_fingerprint", "vfm_kind", "attention", "beta", "gamma", "logit_scale", "prob_thd",
                "area_thd", "pamr_steps", "slide_crop", "slide_stride")


def fingerprint(args: argparse.Namespace, job: "Job") -> dict[str, Any]:
    """What a resumed run must share with the recorded one: ``configuration()`` less :data:`NOT_FINGERPRINTED`,
    plus the dataset (its image ids) and the metric settings. Records are keyed by image, so the device count
    and the device may change."""
    config = configuration(args, job, 1)
    for name in NOT_FINGERPRINTED:
        config.pop(name)
    ids = dataset_ids(job.dataset)
    key = job.key
    return {**config, "dataset": key if not is_card(key) else str(Path(key).resolve()),
            "data_root": str(job.dm.data_root), "num_images": len(ids),
            "image_ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
            "ignore_index": job.ignore_index, "mmseg_histc": bool(job.preset.mmseg_histc),
            "class_names_sha256": hashlib.sha256("\n".join(job.dm.class_names).encode()).hexdigest()}


def dataset_ids(dataset) -> list[str]:
    """Image ids of a test dataset or of a ``Subset`` of one, in dataset order."""
    import torch

    if isinstance(dataset, torch.utils.data.Subset):
        base = dataset_ids(dataset.dataset)
        return [base[i] for i in dataset.indices]
    return [str(i) for i in dataset.ids]


@dataclasses.dataclass
class Job:
    """One benchmark of the run: its data, protocol, vocabulary, output folder and (once built) segmenter."""

    key: str
    preset: Any
    protocol: Any
    dm: Any  # the benchmark's datamodule (set up)
    dataset: Any  # its test dataset, first --limit images
    vocab: Any  # its QueryVocabulary (classes' synonyms and their source)
    ignore_index: int
    out_dir: Path
    model: Any = None

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    @property
    def vocabulary(self) -> list[list[str]]:
        return self.vocab.vocabulary


def data_keys(args: argparse.Namespace) -> list[str]:
    """``--data``: 'all' (Table 1), one key or card, or a comma-separated list of them."""
    return list(TABLE_ORDER) if args.data == "all" else [k.strip() for k in args.data.split(",") if k.strip()]


def is_multi(args: argparse.Namespace) -> bool:
    """Several benchmarks: each gets OUT/<key>/ and --data-root is the data folder holding the standard sub-paths."""
    return args.data == "all" or len(data_keys(args)) > 1


def make_job(key: str, args: argparse.Namespace, out_dir: Path) -> Job:
    """Data, protocol and vocabulary of one benchmark (no model yet)."""
    import torch

    from datamodules import build_datamodule
    from proxyclip_pl.query_vocabularies import card_vocabulary, query_vocabulary

    preset = build_datamodule(key, data_root=args.data_root).preset if is_card(key) else BENCHMARKS[key]
    protocol = resolve_protocol(args, key, preset)
    # the datamodule resizes with the protocol's short side and long-side cap
    dm = build_datamodule(key, data_root=args.data_root if is_card(key) else data_root_for(key, args),
                          num_workers=args.num_workers, short_side=protocol.short_side,
                          long_side_cap=protocol.long_side_cap)
    dm.setup("test")
    dataset = dm.test_dataset
    if args.limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(args.limit, len(dataset))))
    if preset.vocabulary is not None:  # a user dataset: the card's classes and synonyms
        from proxyclip_pl.vocabulary import validate_vocabulary

        vocab = card_vocabulary(preset.vocabulary, key)
        validate_vocabulary(vocab.vocabulary)
    else:  # the vocabulary is part of the protocol: native baselines read their official class-name files
        vocab = query_vocabulary(args.method, key, args.protocol)
    ignore_index = preset.ignore_index if args.ignore_index is None else args.ignore_index
    return Job(key, preset, protocol, dm, dataset, vocab, ignore_index, out_dir)


def build_models(args: argparse.Namespace, jobs: Sequence[Job]) -> None:
    """Every job's segmenter. Registered methods (built-in or installed): CLIP (and the VFM) built once for the
    whole run, shared by all segmenters. A ``module:factory`` plug-in is called once per benchmark (what it shares
    is up to it)."""
    from proxyclip_pl.factory import build_segmenters

    if not registered(args.method):
        for job in jobs:
            job.model = load_plugin(args.method)(vocabulary=job.vocabulary, protocol=job.protocol)
        return
    kwargs = model_kwargs(args)
    if args.method != "proxyclip" and kwargs.pop("attention") != "proxy":
        raise ValueError(f"--attention is a ProxyCLIP option; --method {args.method} has none")
    if not uses_vfm(args, spec_only=True):
        kwargs.pop("vfm"), kwargs.pop("vfm_weights")
    models = build_segmenters(args.method, {job.key: (job.vocabulary, job.protocol) for job in jobs},
                              text_cache_dir=args.text_cache_dir, **kwargs)
    for job in jobs:
        job.model = models[job.key]


def shared_passes(jobs: Sequence[Job]) -> list[list[Job]]:
    """Jobs grouped into passes, in order of first appearance: a job joins a pass when it has the same image files,
    the same test resize and a segmenter sharing the first one's encoder (same towers and windows), so one
    encoder pass per window serves the whole group. Anything else (e.g. a plug-in that does not expose its
    window embeddings) gets its own pass."""
    from datamodules.shared import image_list
    from proxyclip_pl.segmenter import shares_encoder

    groups: list[list[Job]] = []
    for job in jobs:
        for group in groups:
            lead = group[0]
            if ((lead.protocol.short_side, lead.protocol.long_side_cap)
                    == (job.protocol.short_side, job.protocol.long_side_cap)
                    and shares_encoder(lead.model, job.model)
                    and image_list(lead.dataset) == image_list(job.dataset)):
                group.append(job)
                break
        else:
            groups.append([job])
    return groups


def evaluate_pass(group: Sequence[Job], args: argparse.Namespace, accelerator: str) -> dict[str, dict] | None:
    """Evaluate the benchmarks of one pass; returns key -> results on global rank 0 (None elsewhere)."""
    import lightning.pytorch as pl
    import torch

    from datamodules.shared import SharedImagesDataset
    from proxyclip_pl.evaluation import (BenchmarkEvaluator, BenchmarkScore, ImagesPerSecondBar,
                                         format_results_table, read_results)
    from proxyclip_pl.metrics import SegmentationIoU
    from proxyclip_pl.records import RECORDS_DIR, check_fingerprint, read_records, sum_states

    scores, recorded_by = [], []
    for job in group:
        fp = fingerprint(args, job)
        recorded: dict[int, dict[str, Any]] = {}
        if args.resume:
            if not registered(args.method) and fp["model_fingerprint"] is None:
                raise ValueError(f"cannot resume --method {args.method}: its segmenter ({type(job.model).__name__}) "
                                 "has no state_fingerprint(), so records of another model could be mixed in; give it "
                                 "one (every proxyclip_pl.Segmenter subclass has it) or rerun with --overwrite")
            headers, recorded, dropped = read_records(job.out_dir / RECORDS_DIR)
            check_fingerprint(headers, fp)
            recorded = {i: r for i, r in recorded.items() if 0 <= i < job.num_samples}
            if dropped:
                note(f"resume: {job.key}: ignored {dropped} torn or corrupt record line(s)")
            note(f"resume: {job.key}: {len(recorded)} of {job.num_samples} images taken from the records in "
                 f"{job.out_dir / RECORDS_DIR}; {job.num_samples - len(recorded)} left to evaluate")
        prior, prior_rows = None, []
        if recorded:
            like = SegmentationIoU(len(job.dm.class_names), num_samples=job.num_samples, ignore_index=job.ignore_index,
                                   mmseg_histc=job.preset.mmseg_histc, confusion=True)
            prior = sum_states(recorded.values(), {name: getattr(like, name) for name in like._defaults})
            prior_rows = [recorded[i]["row"] for i in sorted(recorded) if recorded[i].get("row") is not None]
            if args.per_image and len(prior_rows) != len(recorded):
                raise ValueError("cannot resume with --per-image: the recorded run did not keep per-image rows")
        metrics_file = job.out_dir / ".metrics.json"
        metrics_file.unlink(missing_ok=True)  # never read a previous run's numbers
        show_dir = Path(args.show_dir) / job.key if args.show_dir and is_multi(args) else args.show_dir
        scores.append(BenchmarkScore(
            job.dm.class_names, job.num_samples,
            prediction_dir=job.out_dir / "predictions" if args.save_predictions else None, show_dir=show_dir,
            results_file=metrics_file, ignore_index=job.ignore_index, mmseg_histc=job.preset.mmseg_histc,
            confusion_file=job.out_dir / "confusion.npy",
            per_image_file=job.out_dir / "per_image.csv" if args.per_image else None,
            record_dir=job.out_dir / RECORDS_DIR, fingerprint=fp, prior=prior, prior_rows=prior_rows,
            recorded=recorded.keys(),
        ))
        recorded_by.append(recorded)

    lead, num_samples = group[0], group[0].num_samples
    name = "+".join(job.key for job in group)
    # An image is evaluated again if any benchmark of the pass lacks its record (each benchmark skips its own).
    remaining = [i for i in range(num_samples) if any(i not in recorded for recorded in recorded_by)]
    ranks = args.devices * args.num_nodes
    if remaining and ranks > len(remaining):
        # A rank without images never reaches the collective metric reduction (Lightning skips its
        # loop), so the others would wait for it until the timeout: refuse before any process starts.
        resumed = len(remaining) < num_samples
        what = f"{len(remaining)} image(s) left to evaluate" if resumed else f"{num_samples} image(s)"
        raise ValueError(f"{name}: {what} for {ranks} processes (--devices {args.devices} x "
                         f"--num-nodes {args.num_nodes}); every process needs at least one image: use at most "
                         f"{len(remaining)} device(s){' or a larger --limit' if args.limit is not None and not resumed else ''}")
    dataset = lead.dataset if len(group) == 1 else SharedImagesDataset([job.dataset for job in group])
    if len(remaining) < num_samples:
        dataset = torch.utils.data.Subset(dataset, remaining)
    lead.dm.test_dataset = dataset
    module = BenchmarkEvaluator([job.model for job in group], scores)
    strategy = args.strategy
    if strategy == "auto" and ranks > 1:
        strategy = "ddp"
    trainer = pl.Trainer(
        accelerator=accelerator, devices=args.devices, num_nodes=args.num_nodes, strategy=strategy,
        precision=args.precision, logger=False, enable_checkpointing=False, enable_model_summary=False,
        callbacks=[ImagesPerSecondBar()], inference_mode=True,
    )
    start = time.perf_counter()
    if remaining:
        trainer.test(module, datamodule=lead.dm, verbose=False)
    elif trainer.is_global_zero:  # every image is recorded: the results are the records' sums
        for score in scores:
            score.publish_records()
    seconds = time.perf_counter() - start
    if not trainer.is_global_zero:
        return None
    all_results = {}
    for job, recorded in zip(group, recorded_by):
        metrics_file = job.out_dir / ".metrics.json"
        results = read_results(metrics_file)
        metrics_file.unlink()
        if results["num_images"] != job.num_samples:
            raise RuntimeError(f"{job.key}: evaluated {results['num_images']} images, expected {job.num_samples}")
        evaluated = job.num_samples - len(recorded)
        results = {
            "dataset": job.preset.key,
            **({"dataset_card": str(Path(job.key).resolve())} if is_card(job.key) else {}),
            "num_images": results["num_images"],
            "mIoU": results["mIoU"],
            "aAcc": results["aAcc"],
            "mAcc": results["mAcc"],
            "per_class_iou": results["per_class_iou"],
            "per_class_acc": results["per_class_acc"],
            "ignore_index": job.ignore_index,
            "metric_arithmetic": "mmseg_histc" if job.preset.mmseg_histc else "strict",
            "seconds": round(seconds, 2),
            "images_per_second": round(evaluated / seconds, 3) if seconds > 0 else None,
            # one encoder pass served these benchmarks; its windows (all ranks, this run) are counted once
            "shared_pass": [j.key for j in group],
            "windows_encoded": results["windows_encoded"],
            **({"resumed_images": len(recorded)} if recorded else {}),
            "data_root": str(job.dm.data_root),
            "config": configuration(args, job, trainer.world_size),
        }
        (job.out_dir / "results.json").write_text(json.dumps(results, indent=2))
        print(format_results_table(results, title=f"== {job.key} ({args.method}, {args.protocol} protocol) =="))
        print(f"results written to {job.out_dir / 'results.json'}")
        all_results[job.key] = results
    return all_results


def describe_model(args: argparse.Namespace) -> str:
    """``CLIP <name> (<weights>)`` and, for ProxyCLIP, ``+ VFM <name> (<weights>)``; a plug-in by its factory."""
    if not registered(args.method):
        return f"the plug-in {args.method}"
    from proxyclip_pl.towers import resolve_clip_weights

    text = f"{args.method}: CLIP {args.clip} ({resolve_clip_weights(args.clip, args.clip_weights)})"
    if uses_vfm(args):
        text += f" + VFM {args.vfm} ({args.vfm_weights})"
    return text


def validate(args: argparse.Namespace) -> list[str]:
    """Every check that needs no torch, model or dataset scan: benchmark names, dataset cards and roots, numbers,
    the method's form and the output folder. Returns the benchmark keys; raises a one-line user error."""
    from datamodules.custom import custom_preset, read_card

    keys = data_keys(args)
    for key in keys:
        if is_card(key):
            spec = read_card(key)  # a bad card fails here, before any import of torch
            root = Path(args.data_root) if args.data_root else Path(spec.pop("data_root"))
            spec.pop("data_root", None)
            custom_preset(**spec)
            if not root.is_dir():
                raise FileNotFoundError(f"--data {key}: its data_root {root} does not exist")
        elif key not in BENCHMARKS:
            raise ValueError(f"unknown --data {key!r}; expected one of {', '.join(BENCHMARKS)}, "
                             "'all', a dataset card (.json) or a comma-separated list")
        else:
            data_root_for(key, args)  # a bad --data-root fails before anything is built
    if len(set(keys)) != len(keys) or not keys:
        raise ValueError(f"--data {args.data!r}: list each benchmark once")
    if not registered(args.method) and (":" not in args.method or args.method.startswith(":")
                                        or args.method.endswith(":")):
        raise ValueError(f"unknown --method {args.method!r}; expected one of {', '.join(method_sources())} "
                         "(proxyclip-test --list) or module:factory")
    if args.pamr_steps is not None and args.pamr_steps < 0:
        raise ValueError(f"--pamr-steps must be >= 0, got {args.pamr_steps}")
    if args.devices < 1 or args.num_nodes < 1:
        raise ValueError(f"--devices and --num-nodes must be >= 1 (got {args.devices}, {args.num_nodes})")
    if args.strategy not in STRATEGIES:
        raise ValueError(f"--strategy {args.strategy!r} is not supported; use one of {', '.join(STRATEGIES)}")
    if args.output_dir is None:
        if args.num_nodes > 1:
            raise ValueError("--num-nodes > 1 needs --output-dir (a folder every node writes to)")
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
    """Where one benchmark's results go: OUTPUT_DIR, or OUTPUT_DIR/<key>/ when several benchmarks run."""
    return Path(args.output_dir) / key if is_multi(args) else Path(args.output_dir)


def check_resume_early(args: argparse.Namespace, jobs: Sequence[Job]) -> None:
    """Refuse a resume whose records were written under another protocol, vocabulary, weights or dataset before any
    model is built (the fields that need the built model are compared in :func:`evaluate_pass`)."""
    from proxyclip_pl.records import RECORDS_DIR, check_fingerprint, read_records

    if not args.resume:
        return
    for job in jobs:
        headers = read_records(job.out_dir / RECORDS_DIR)[0]
        if headers:
            check_fingerprint(headers, fingerprint(args, job), ignore=MODEL_FIELDS)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during the evaluation; the message is the command that continues the run."""


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, dict | None]:
    """The whole evaluation of parsed arguments (``argv``: as given, for the resume command).

    Returns:
        benchmark key -> its ``results.json`` content (``None`` in the processes of other ranks).
    Raises:
        RunInterrupted: on Ctrl-C, after every evaluated image has been recorded.
    """
    start = time.perf_counter()
    keys = validate(args)
    out_root = Path(args.output_dir)
    note(f"proxyclip-test: {args.method} ({args.protocol} protocol) on {', '.join(keys)}; output: {out_root}")
    quiet_libraries()
    if not registered(args.method):
        load_plugin(args.method)  # fail on a bad module:factory before any process starts
    accelerator = args.accelerator = check_devices(args)  # results.json records the device actually used
    if registered(args.method):  # a wrong model name fails before the data are scanned
        from proxyclip_pl.towers import check_clip_name, check_vfm_name

        check_clip_name(args.clip)
        if uses_vfm(args):
            check_vfm_name(args.vfm)
    jobs = [make_job(key, args, output_dir_of(args, key)) for key in keys]
    check_resume_early(args, jobs)
    with phase(f"building {describe_model(args)}", "model ready"):
        build_models(args, jobs)  # once for the whole run
    all_results: dict[str, dict | None] = {}
    passes = shared_passes(jobs)
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


def published_row(method: str) -> Mapping[str, float | None] | None:
    """The published mIoU per benchmark of a registered method (``None``: unregistered or none published)."""
    from proxyclip_pl.registry import method_spec

    return method_spec(method).published if registered(method) else None


def publishes(args: argparse.Namespace, jobs: Sequence[Job]) -> bool:
    """Whether the method's published numbers apply to this run: its native protocol and, on every benchmark, its
    native vocabulary (a baseline's published row was measured with its own class-name files, not ours)."""
    from proxyclip_pl.query_vocabularies import query_vocabulary

    return args.protocol == "native" and published_row(args.method) is not None and all(
        not is_card(job.key) and job.vocab.source == query_vocabulary(args.method, job.key, "native").source
        for job in jobs)


def table_row(method: str, protocol: str, row: dict[str, float], reported: bool = True) -> str:
    """Table 1 row of ``method`` (mIoU per benchmark and the average), with the published row under it
    when the method's native protocol was run and its paper/README numbers are known."""
    name = f"{method} ({protocol})"
    width = max(len(name), 10)
    lines = [f"{'':<{width}} | " + " | ".join(f"{k:>11}" for k in row),
             f"{name:<{width}} | " + " | ".join(f"{v:>11.2f}" for v in row.values())]
    published = published_row(method) if reported and protocol == "native" else None
    if published is not None:
        values = [published.get(k) for k in TABLE_ORDER]
        cells = [f"{v:>11.2f}" if v is not None else f"{'-':>11}" for v in values]
        known = [v for v in values if v is not None]
        cells.append(f"{sum(known) / len(known):>11.2f}" if len(known) == len(values) else f"{'-':>11}")
        lines.append(f"{'reported':<{width}} | " + " | ".join(cells))
    return "\n".join(lines)


def registered(method: str) -> bool:
    """A method of the registry (built-in, installed through an entry point, or registered at run time)."""
    return method in method_sources()


def uses_vfm(args: argparse.Namespace, spec_only: bool = False) -> bool:
    """Whether the run builds a VFM: the method's spec asks for one (and ``--vfm`` is not ``none``)."""
    if not registered(args.method):
        return False
    from proxyclip_pl.registry import method_spec

    return method_spec(args.method).uses_vfm and (spec_only or str(args.vfm).lower() != "none")


def list_entries() -> str:
    """``--list``: every method and benchmark with its source."""
    from proxyclip_pl.registry import method_spec

    lines = ["methods:"]
    for name, source in method_sources().items():
        spec = method_spec(name)
        lines.append(f"  {name:<12} {source:<24} {spec.description}")
    lines.append("benchmarks:")
    for key, source in BENCHMARKS.sources().items():
        lines.append(f"  {key:<12} {source:<24} {BENCHMARKS[key].num_classes} classes")
    return "\n".join(lines)


def cli() -> None:
    """Console entry point ``proxyclip-test`` (and ``python scripts/test.py``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
