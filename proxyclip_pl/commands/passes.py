"""One encoder pass of a ``proxyclip-test`` run: its benchmarks' records, metrics and outputs, under Lightning."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Sequence

from proxyclip_pl.console import note
from proxyclip_pl.commands.jobs import Job, folder_name, is_card, is_multi, registered
from proxyclip_pl.commands.run_record import configuration, fingerprint


def evaluate_pass(group: Sequence[Job], args: argparse.Namespace, accelerator: str) -> dict[str, dict] | None:
    """Evaluate the benchmarks of one pass; returns key -> results on global rank 0 (None elsewhere)."""
    import lightning.pytorch as pl
    import torch

    from datamodules.shared import SharedImagesDataset
    from proxyclip_pl.evaluation import BenchmarkEvaluator, BenchmarkScore
    from proxyclip_pl.result_files import ImagesPerSecondBar, format_results_table, read_results
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
            prior = sum_states(recorded.values(), like.states())
            prior_rows = [recorded[i]["row"] for i in sorted(recorded) if recorded[i].get("row") is not None]
            if args.per_image and len(prior_rows) != len(recorded):
                raise ValueError("cannot resume with --per-image: the recorded run did not keep per-image rows")
        metrics_file = job.out_dir / ".metrics.json"
        metrics_file.unlink(missing_ok=True)  # never read a previous run's numbers
        show_dir = Path(args.show_dir) / folder_name(job.key) if args.show_dir and is_multi(args) else args.show_dir
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
            # max over the processes: CUDA max_memory_allocated, or the process's peak RSS on the CPU
            "peak_memory_mib": results.get("peak_memory_mib"),
            "device": results.get("device"),
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
