"""The metric's functional core: per-image counts, per-image rows and results from summed counts (MMSegmentation
``IoUMetric`` arithmetic), shared by :class:`~proxyclip_pl.metrics.SegmentationIoU`, the per-image rows and a
resumed run's records."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

# How many offending indices / values to spell out in error messages.
_MAX_LISTED = 20


def format_indices(idx: Tensor) -> str:
    """Format a 1-D index tensor for an error message, truncated to ``_MAX_LISTED`` entries."""
    values = idx.tolist()
    head = ", ".join(str(v) for v in values[:_MAX_LISTED])
    more = f", ... ({len(values) - _MAX_LISTED} more)" if len(values) > _MAX_LISTED else ""
    return f"[{head}{more}]"


def _round_or_none(x: float) -> float | None:
    """Percent value rounded to 2 decimals, ``None`` for NaN (JSON/logging friendly)."""
    return None if math.isnan(x) else round(x, 2)


def metrics_from_areas(intersect: Tensor, pred_area: Tensor, label_area: Tensor) -> dict[str, Any]:
    """Turn dataset-level per-class counts into the MMSeg ``IoUMetric`` numbers.

    Args:
        intersect: ``[C]`` integer, ``I[c]`` = #pixels with pred == target == c.
        pred_area: ``[C]`` integer, ``P[c]`` = #non-ignored pixels predicted as c.
        label_area: ``[C]`` integer, ``L[c]`` = #non-ignored pixels labelled c.

    Returns:
        A dict with
        ``iou`` / ``acc``: float64 CPU tensors ``[C]``, unrounded *fractions* in ``[0, 1]``,
        NaN where the union (resp. label area) is 0;
        ``mIoU`` / ``mAcc`` / ``aAcc``: unrounded float64 percentages in ``[0, 100]`` (Python
        floats; NaN when no class has a non-zero denominator).
    """
    i = intersect.detach().to("cpu", torch.float64)
    p = pred_area.detach().to("cpu", torch.float64)
    lab = label_area.detach().to("cpu", torch.float64)
    union = p + lab - i
    # 0/0 -> NaN in float64 (and x/0 with x > 0 cannot happen: I <= min(P, L) <= U).
    iou = i / union
    acc = i / lab
    # torch.nanmean of an all-NaN vector is NaN (like np.nanmean, minus the warning).
    miou = torch.nanmean(iou).item() * 100.0
    macc = torch.nanmean(acc).item() * 100.0
    total_label = lab.sum().item()
    aacc = (i.sum().item() / total_label * 100.0) if total_label > 0 else math.nan
    return {"iou": iou, "acc": acc, "mIoU": miou, "mAcc": macc, "aAcc": aacc}


def image_counts(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255,
                 mmseg_histc: bool = False, confusion: bool = False) -> dict[str, Tensor]:
    """What one image (or a batch of same-size images) adds to the metric states: the functional core shared by
    :meth:`SegmentationIoU.update` and the per-image rows (:func:`image_row`). Inputs are not checked here.

    Args:
        pred: integer class ids in ``[0, C)``; target: integer GT, same shape (``ignore_index`` pixels dropped).
        mmseg_histc: GT outside ``[0, C)`` leaves the label histogram, its predictions stay in ``pred_area``.
        confusion: also count ``confusion`` ``[C, C]`` (rows GT, columns prediction) and ``unlabeled_pred`` ``[C]``.
    Returns:
        int64 ``intersect``, ``pred_area``, ``label_area`` ``[C]`` (and ``confusion``, ``unlabeled_pred``).
    """
    valid = target != ignore_index
    # bincount needs 1-D non-negative int64; only the non-ignored pixels count. Plain (unweighted) bincount:
    # O(N) memory, deterministic, allowed under torch.use_deterministic_algorithms -- unlike an N x C^2 one-hot.
    p = pred[valid].to(torch.int64)
    t = target[valid].to(torch.int64)
    # Predictions are always in [0, C): every scored pixel counts in pred_area (histc keeps it).
    counts = {"pred_area": torch.bincount(p, minlength=num_classes)}
    unlabeled = None
    if mmseg_histc:
        in_range = (t >= 0) & (t < num_classes)
        if not bool(in_range.all()):
            unlabeled = torch.bincount(p[~in_range], minlength=num_classes)
            p, t = p[in_range], t[in_range]
    counts["intersect"] = torch.bincount(t[p == t], minlength=num_classes)
    counts["label_area"] = torch.bincount(t, minlength=num_classes)
    if confusion:
        counts["confusion"] = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).view(
            num_classes, num_classes)
        counts["unlabeled_pred"] = unlabeled if unlabeled is not None else torch.zeros_like(counts["pred_area"])
    return counts


def image_row(counts: Mapping[str, Tensor], pixels: int) -> dict[str, Any]:
    """One image's row from its :func:`image_counts`: pixels scored, pixel accuracy and mIoU (%, over the classes
    present in the ground truth or predicted; NaN when undefined) and the GT classes present."""
    inter, area_l = counts["intersect"].double(), counts["label_area"]
    union = counts["pred_area"].double() + area_l.double() - inter
    present = union > 0
    miou = (inter[present] / union[present]).mean().item() * 100 if bool(present.any()) else float("nan")
    labelled = int(area_l.sum())
    return {"pixels": pixels, "pixel_acc": inter.sum().item() / labelled * 100 if labelled else float("nan"),
            "miou": miou, "classes": " ".join(str(c) for c in torch.nonzero(area_l).flatten().tolist())}


def results_from_states(states: Mapping[str, Tensor], num_samples: int | None = None) -> dict[str, Any]:
    """The metric's results (:meth:`SegmentationIoU.compute`) from summed states, e.g. a resumed run's records.

    Raises:
        RuntimeError: when ``num_samples`` is given and some dataset index was seen zero times or more than once.
    """
    if num_samples is not None:
        seen = states["seen"].detach().cpu()
        dup = torch.nonzero(seen > 1).flatten()
        missing = torch.nonzero(seen == 0).flatten()
        if dup.numel() or missing.numel():
            parts = []
            if dup.numel():
                parts.append(f"{dup.numel()} duplicated index(es) {format_indices(dup)}")
            if missing.numel():
                parts.append(f"{missing.numel()} missing index(es) {format_indices(missing)}")
            raise RuntimeError(
                f"SegmentationIoU: every one of the {num_samples} samples must be evaluated "
                f"exactly once, but found " + " and ".join(parts) + " (padding DistributedSampler?)"
            )
    raw = metrics_from_areas(states["intersect"], states["pred_area"], states["label_area"])
    extra: dict[str, Any] = {}
    if "confusion" in states:  # "confusion" [C, C] and "unlabeled_pred" [C], int64 CPU tensors
        extra = {"confusion": states["confusion"].detach().cpu(), "unlabeled_pred": states["unlabeled_pred"].detach().cpu()}
    return {
        **extra,
        "mIoU": round(raw["mIoU"], 2),
        "mAcc": round(raw["mAcc"], 2),
        "aAcc": round(raw["aAcc"], 2),
        "per_class_iou": [_round_or_none(v * 100.0) for v in raw["iou"].tolist()],
        "per_class_acc": [_round_or_none(v * 100.0) for v in raw["acc"].tolist()],
        "iou": raw["iou"],
        "acc": raw["acc"],
        "num_images": int(states["num_images"].item()),
    }
