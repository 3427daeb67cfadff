"""Lightning shell for distributed benchmark evaluation of any segmenter (ProxyCLIP, SCLIP, ..., a plug-in).

Each rank segments its shard (the datamodule's non-padding sampler gives every image to exactly one
rank) and adds integer per-class areas to a sum-reduced metric; at the end of the epoch every rank
calls ``compute()`` once (one collective), which also checks that each image was seen exactly once.

Results leave the workers through a file written by global rank 0 (``results_file``), never through an
attribute of the module: with ``ddp_spawn`` (and notebook launchers) the caller's module object is not
the one the workers ran, so only a file reaches the caller under every launcher.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Collection, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch import nn

from datamodules.io import read_image

from .metrics import SegmentationIoU
from .records import RecordWriter, sparse
from .resources import device_name, peak_memory_mib, reset_peak_memory
from .shared_pass import shared_slide_logits, shares_encoder
from .visualize import show_panel
from .result_files import write_json_atomic, write_per_image_csv
from .iou import image_counts, image_row, results_from_states


def check_segmenter(model: nn.Module) -> None:
    """Raise ``ValueError`` unless ``model`` is an ``nn.Module`` with ``num_classes`` and ``segment_resized``."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"the segmenter must be a torch.nn.Module, got {type(model).__name__}")
    missing = [name for name in ("num_classes", "segment_resized") if not hasattr(model, name)]
    if missing:
        raise ValueError(f"the segmenter {type(model).__name__} has no {' and no '.join(missing)}: it needs "
                         "num_classes and segment_resized(image [1, 3, h, w] in [0, 1], (H0, W0)) -> LongTensor [H0, W0]")


class BenchmarkScore(nn.Module):
    """One benchmark's exact metric and outputs inside an evaluation (the images' segmentation is the
    evaluator's job).

    Args:
        class_names: the benchmark's class names in label order (C entries).
        num_samples: dataset length; every index in [0, num_samples) must be scored exactly once.
        prediction_dir: if set, write ``<id>.png`` label maps (evaluation label space) there: 8-bit, or
            16-bit when the benchmark has more than 256 classes.
        show_dir: if set, write ``<id>.png`` panels image | prediction | ground truth there.
        results_file: if set, global rank 0 writes the dataset-level metrics there as JSON (atomically)
            at the end of the test epoch; read it with :func:`read_results`.
        confusion_file: if set, global rank 0 writes the dataset-level ``[C, C]`` int64 confusion matrix
            there (``.npy``; rows = ground truth).
        per_image_file: if set, per-image rows gathered from all ranks are written there as CSV, in
            dataset order.
        ignore_index, mmseg_histc: the metric's ignore value and range arithmetic (see
            :class:`~proxyclip_pl.metrics.SegmentationIoU`); a preset's ``ignore_index`` / ``mmseg_histc``.
        record_dir, fingerprint: if set, every process durably records each image's metric increments there
            (:mod:`proxyclip_pl.records`, header ``fingerprint``) so that a crashed run can be resumed.
        prior, prior_rows: a resumed run's recorded metric state sums and per-image rows; global rank 0 adds them
            once at the start of the test epoch (the other ranks start from zero, so the all-reduce counts them
            exactly once).
        recorded: indices already in ``prior``: skipped when the evaluator meets them again (a shared pass may
            revisit an image that another benchmark of the pass still needs).
    """

    def __init__(
        self,
        class_names: Sequence[str],
        num_samples: int,
        prediction_dir: str | Path | None = None,
        show_dir: str | Path | None = None,
        results_file: str | Path | None = None,
        ignore_index: int = 255,
        mmseg_histc: bool = False,
        confusion_file: str | Path | None = None,
        per_image_file: str | Path | None = None,
        record_dir: str | Path | None = None,
        fingerprint: dict[str, Any] | None = None,
        prior: dict[str, torch.Tensor] | None = None,
        prior_rows: Sequence[dict[str, Any]] = (),
        recorded: Collection[int] = (),
    ) -> None:
        super().__init__()
        self.class_names = list(class_names)
        self.ignore_index = int(ignore_index)
        self.mmseg_histc = bool(mmseg_histc)
        self.metric = SegmentationIoU(len(class_names), num_samples=num_samples, ignore_index=self.ignore_index,
                                      mmseg_histc=mmseg_histc, confusion=True)
        self.prediction_dir = Path(prediction_dir) if prediction_dir else None
        self.show_dir = Path(show_dir) if show_dir else None
        self.results_file = Path(results_file) if results_file else None
        self.confusion_file = Path(confusion_file) if confusion_file else None
        self.per_image_file = Path(per_image_file) if per_image_file else None
        self._per_image: list[dict[str, Any]] = []
        self._writer = None
        if record_dir is not None:
            self._writer = RecordWriter(record_dir, fingerprint or {})
        self.prior = prior
        self.prior_rows = list(prior_rows)
        self.recorded = frozenset(int(i) for i in recorded)
        #: The metrics in this process after :meth:`publish` (global rank 0 of an in-process run).
        self.results: dict[str, Any] | None = None

    def start(self, is_global_zero: bool) -> None:
        """Start of the test epoch: private metric states, the resumed sums on global rank 0, output folders."""
        # ddp_spawn pickles the module into each worker; on the CPU torch pickles tensors into shared
        # memory, so every worker would add into the same metric states and the all-reduce would count
        # each image twice. reset() gives each worker private copies.
        self.metric.reset()
        self._per_image = []
        if is_global_zero:
            self.add_prior()
        for folder in (self.prediction_dir, self.show_dir):
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)

    def add_prior(self) -> None:
        """Add a resumed run's recorded sums (and per-image rows) to this process's metric."""
        if self.prior is not None:
            self.metric.add_states(self.prior)
        self._per_image.extend(self.prior_rows)

    def add(self, pred: torch.Tensor, target: torch.Tensor, sample: dict[str, Any]) -> None:
        """Score one image: metric update, per-image row, durable record, saved outputs.

        Args:
            pred: LongTensor [H0, W0] of class ids in [0, C).
            target: the benchmark's label [H0, W0] (values in [0, C) or ``ignore_index``).
            sample: the datamodule sample (``index``, ``id``, ``path``).
        """
        target = target.to(pred.device)
        before = self._metric_states() if self._writer is not None else None
        self.metric.update(pred, target, sample["index"])
        row = None
        if self.per_image_file is not None:
            row = self.image_row(pred, target, int(sample["index"]), str(sample["id"]))
            self._per_image.append(row)
        if self.prediction_dir is not None or self.show_dir is not None:
            self._write_outputs(sample, pred.cpu().numpy(), target.cpu().numpy())
        if before is not None:  # last: a recorded image has its outputs on disk (a resumed run skips it)
            self._record(sample, before, row)

    def _metric_states(self) -> dict[str, torch.Tensor]:
        """Copies of every (int64, sum-reduced) metric state."""
        return self.metric.states()

    def _record(self, sample: dict[str, Any], before: dict[str, torch.Tensor], row: dict[str, Any] | None) -> None:
        """Durably record what this image added to each metric state (and its per-image row)."""
        states = {name: sparse(getattr(self.metric, name) - old) for name, old in before.items()}
        self._writer.append(int(sample["index"]), str(sample["id"]), states, row)
        _crash_hook()

    def image_row(self, pred: torch.Tensor, target: torch.Tensor, index: int, sid: str) -> dict[str, Any]:
        """One image's row under the metric's own arithmetic (:func:`proxyclip_pl.iou.image_row`): pixels scored
        (not ``ignore_index``), pixel accuracy, mIoU over the classes present in the ground truth or predicted, GT
        classes."""
        counts = image_counts(pred, target, len(self.class_names), self.ignore_index, mmseg_histc=True)
        return {"index": index, "id": sid, **image_row(counts, int((target != self.ignore_index).sum()))}

    def _write_outputs(self, sample: dict[str, Any], pred: np.ndarray, label: np.ndarray) -> None:
        name = str(sample["id"]).replace("/", "_")
        num_classes = len(self.class_names)
        if self.prediction_dir is not None:
            # 8-bit 'L' PNG up to 256 classes, 16-bit ('I;16') PNG beyond (ADE-847, PC-459).
            dtype = np.uint8 if num_classes <= 256 else np.uint16
            Image.fromarray(np.ascontiguousarray(pred.astype(dtype))).save(self.prediction_dir / f"{name}.png")
        if self.show_dir is not None:
            image = read_image(sample["path"])
            black = (self.ignore_index,) if not 0 <= self.ignore_index < num_classes else ()
            panel = show_panel(image, pred, label, self.class_names, black, title=str(sample["id"]))
            Image.fromarray(panel).save(self.show_dir / f"{name}.png")

    def publish(self, is_global_zero: bool, extra: dict[str, Any] | None = None, collective: bool = True,
                results: dict[str, Any] | None = None) -> dict[str, Any]:
        """End of the test epoch: close the records, compute the metric (a collective under DDP: every rank
        calls it exactly once; ``results`` given: already computed) and write the outputs (and ``extra``
        entries) from global rank 0."""
        if self._writer is not None:
            self._writer.close()
        if results is None:
            results = self.metric.compute()
        self.metric.reset()
        results.pop("iou"), results.pop("acc")
        confusion, unlabeled = results.pop("confusion"), results.pop("unlabeled_pred")
        rows = self._gather_per_image(collective) if self.per_image_file is not None else None
        if is_global_zero:
            if self.confusion_file is not None:
                np.save(self.confusion_file, confusion.numpy().astype(np.int64))
                if self.mmseg_histc:
                    np.save(self.confusion_file.with_name("unlabeled_pred.npy"), unlabeled.numpy().astype(np.int64))
            if rows is not None:
                write_per_image_csv(self.per_image_file, rows)
        results["per_class_iou"] = dict(zip(self.class_names, results["per_class_iou"]))
        results["per_class_acc"] = dict(zip(self.class_names, results["per_class_acc"]))
        results.update(extra or {})
        self.results = results
        if self.results_file is not None and is_global_zero:
            write_json_atomic(self.results_file, results)
        return results

    def publish_records(self) -> dict[str, Any]:
        """Every image is recorded: the results are the records' sums (global rank 0, no evaluation)."""
        self.metric.reset()
        self.add_prior()
        # Alone on global rank 0 (the other ranks have nothing to add), also when an earlier benchmark left
        # the process group initialised: computed from the states, no collective, or it would wait for ranks
        # that never call it.
        results = results_from_states(self.metric.states(), self.metric.num_samples)
        device = torch.device("cpu")
        return self.publish(True, {"windows_encoded": 0, "peak_memory_mib": round(peak_memory_mib(device), 1),
                                   "device": device_name(device)}, collective=False, results=results)

    def _gather_per_image(self, collective: bool = True) -> list[dict[str, Any]]:
        """Every rank's per-image rows on every rank (a collective unless ``collective`` is off), in dataset order."""
        rows = list(self._per_image)
        if collective and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
        return sorted(rows, key=lambda r: r["index"])


_records_written = 0


def _crash_hook() -> None:
    """Tests simulate ``kill -9`` with ``PROXYCLIP_CRASH_AFTER=K``: the process exits without any cleanup right
    after writing its K-th record (counted over every benchmark of the process)."""
    global _records_written
    _records_written += 1
    crash_after = os.environ.get("PROXYCLIP_CRASH_AFTER")
    if crash_after and _records_written >= int(crash_after):
        os._exit(137)


class BenchmarkEvaluator(pl.LightningModule):
    """One or more benchmarks over the SAME images in one pass (Lightning shell).

    Each rank segments its shard (the datamodule's non-padding sampler gives every image to exactly one rank)
    and adds integer per-class areas to each benchmark's sum-reduced metric; at the end of the epoch every rank
    calls ``compute()`` once per benchmark (one collective each), which also checks that each image was seen
    exactly once.

    With one benchmark the segmenter may be any module with ``segment_resized``. With several, the segmenters
    must share their encoder (:func:`~proxyclip_pl.shared_pass.shares_encoder`): each window is encoded once and
    matched against every benchmark's text embeddings (:func:`~proxyclip_pl.shared_pass.shared_slide_logits`),
    then each benchmark post-processes and scores its own logits; the predictions are exactly those of
    separate runs.

    Args:
        models: one segmenter per benchmark (label order of its benchmark).
        scores: one :class:`BenchmarkScore` per benchmark, same order.

    Samples carry ``label`` (one benchmark) or ``labels`` (one per benchmark, same order; see
    :class:`datamodules.shared.SharedImagesDataset`).
    """

    def __init__(self, models: Sequence[nn.Module], scores: Sequence[BenchmarkScore]) -> None:
        super().__init__()
        if len(models) != len(scores) or not models:
            raise ValueError(f"need one BenchmarkScore per segmenter, got {len(models)} segmenters and {len(scores)}")
        for model, score in zip(models, scores):
            check_segmenter(model)
            if model.num_classes != len(score.class_names):
                raise ValueError(f"the vocabulary has {model.num_classes} classes but the benchmark has "
                                 f"{len(score.class_names)}")
        if len(models) > 1:
            for model in models[1:]:
                if not shares_encoder(models[0], model):
                    raise ValueError(f"{type(model).__name__} does not share the encoder of {type(models[0]).__name__}: "
                                     "evaluate these benchmarks in separate passes")
        self.models = nn.ModuleList(models)
        self.scores = nn.ModuleList(scores)
        self._windows = 0

    def segment(self, sample: dict[str, Any], members: Sequence[int]) -> list[torch.Tensor]:
        """One datamodule sample (resized uint8 image, original size) -> one LongTensor [H0, W0] per member."""
        image = sample["image"].to(self.device, non_blocking=True)[None].float() / 255.0
        size = tuple(int(s) for s in sample["ori_size"])
        lead = self.models[members[0]]
        inputs = {}
        if getattr(lead, "uses_original_image", False):  # whole-image methods: from the original image, once;
            # the id is the file stem, as the official cached masks are named (<stem>.npz)
            inputs = lead.image_inputs(read_image(sample["path"]), Path(sample["path"]).stem)
        if len(self.models) == 1:
            preds = [self.models[0].segment_resized(image, size, **inputs)]
        else:
            models = [self.models[j] for j in members]
            logits = shared_slide_logits(models, image, **inputs)
            preds = [m.postprocess(lg, image, size, m.prob_thd, **inputs) for m, lg in zip(models, logits)]
        for model, pred in zip([self.models[j] for j in members], preds):
            if not isinstance(pred, torch.Tensor) or tuple(pred.shape) != size:
                raise RuntimeError(f"{type(model).__name__}.segment_resized returned "
                                   f"{tuple(getattr(pred, 'shape', ())) or type(pred).__name__}, expected a tensor "
                                   f"of shape {size}")
        return [pred.long() for pred in preds]

    def test_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        for sample in batch:
            labels = sample["labels"] if "labels" in sample else [sample["label"]]
            members = [j for j, score in enumerate(self.scores) if int(sample["index"]) not in score.recorded]
            for j, pred in zip(members, self.segment(sample, members)):
                self.scores[j].add(pred, labels[j], sample)

    def windows_encoded(self) -> int | None:
        """Windows encoded by this process's towers so far (``None`` for segmenters that do not count them)."""
        counts = [getattr(m, "windows_encoded", None) for m in self.models]
        return None if any(c is None for c in counts) else sum(counts)

    def on_test_epoch_start(self) -> None:
        reset_peak_memory(self.device)
        self._windows = self.windows_encoded()
        for score in self.scores:
            score.start(self.trainer.is_global_zero)

    def on_test_epoch_end(self) -> None:
        windows = self.windows_encoded()
        if windows is not None:  # this run's windows, all ranks (a collective)
            local = torch.tensor(windows - self._windows, device=self.device, dtype=torch.long)
            windows = int(self.trainer.strategy.reduce(local, reduce_op="sum").item())
        # the peak over every process (a collective), and what it ran on
        peak = torch.tensor(peak_memory_mib(self.device), device=self.device, dtype=torch.float64)
        peak = round(float(self.trainer.strategy.reduce(peak, reduce_op="max").item()), 1)
        extra = {"windows_encoded": windows, "peak_memory_mib": peak, "device": device_name(self.device)}
        for score in self.scores:
            results = score.publish(self.trainer.is_global_zero, extra)
        if len(self.scores) == 1:
            for key in ("mIoU", "mAcc", "aAcc"):
                self.log(key, results[key], sync_dist=False, rank_zero_only=True)


class SegmenterEvaluator(BenchmarkEvaluator):
    """A segmenter on each test image of one benchmark, exact mIoU over the whole split.

    Args:
        model: any ``nn.Module`` with ``num_classes`` and ``segment_resized(image, size)`` (image: the
            datamodule's resized sample as [1, 3, h, w] floats in [0, 1]; size: the original (H0, W0);
            returns a LongTensor [H0, W0]), e.g. a :class:`~proxyclip_pl.segmenter.Segmenter` built under the
            benchmark's protocol.
        class_names, num_samples, score_kwargs: as :class:`BenchmarkScore`.

    Crash simulation (tests): with ``PROXYCLIP_CRASH_AFTER=K`` in the environment, a recording process dies with
    ``os._exit(137)`` (no cleanup, like ``kill -9``) right after writing its K-th record.
    """

    def __init__(self, model: nn.Module, class_names: Sequence[str], num_samples: int, **score_kwargs: Any) -> None:
        check_segmenter(model)
        super().__init__([model], [BenchmarkScore(class_names, num_samples, **score_kwargs)])

    @property
    def model(self) -> nn.Module:
        return self.models[0]

    @property
    def results(self) -> dict[str, Any] | None:
        """The metrics in this process (global rank 0 of an in-process run); launchers that run the workers
        elsewhere (``ddp_spawn``) leave it ``None`` here: use ``results_file``."""
        return self.scores[0].results


#: The former name (ProxyCLIP was the only method).
ProxyCLIPEvaluator = SegmenterEvaluator
