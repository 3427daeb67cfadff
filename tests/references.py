"""Shared reference implementations for the tests (one per quantity; every test imports from here).

``mmseg_areas`` / ``mmseg_metrics``: a NumPy transcription of MMSegmentation's ``IoUMetric``
(``intersect_and_union`` + ``total_area_to_metrics`` + the nanmean of ``compute_metrics``), written
independently of :mod:`proxyclip_pl.metrics` so that the package's metric can be checked against it.
See docs/dataset_notes.md, 'The metric'.

Per image, the pixels whose label equals ``ignore_index`` are dropped (only the label decides; the
prediction at such a pixel does not matter). The per-class areas are then histograms with mmseg's
``torch.histc(x, bins=C, min=0, max=C-1)`` range semantics: values outside ``[0, C-1]`` are dropped
from that histogram (and ``C-1`` falls into the last bin). So a label ``>= C`` other than
``ignore_index`` is missing from the label (and intersection) areas while the prediction at that pixel
still counts in the prediction area, and a prediction ``>= C`` is missing from the prediction area.
For maps whose values all lie in ``[0, C) ∪ {ignore_index}`` this equals exact per-class counting.
The areas are summed over all images; nothing is averaged per image.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np

IGNORE_INDEX = 255


def _histc(values: np.ndarray, num_classes: int) -> np.ndarray:
    """``torch.histc(values, bins=C, min=0, max=C-1)`` as float64: out-of-range values are dropped."""
    return np.histogram(values.astype(np.float64), bins=num_classes, range=(0, num_classes - 1))[0].astype(np.float64)


def mmseg_areas(pred: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX):
    """mmseg ``intersect_and_union`` of one image.

    Args:
        pred: integer prediction map (any shape, any integer dtype).
        label: integer label map of the same shape.
        num_classes: C.
        ignore_index: label value whose pixels are dropped (255; 65535 for the corrected ADE-847 /
            PC-459 score; it may lie inside [0, C), then that class is dropped entirely).
    Returns:
        ``(intersect, union, pred_area, label_area)``, each a float64 array [C] of pixel counts.
    """
    keep = label != ignore_index
    pred, label = pred[keep].astype(np.int64), label[keep].astype(np.int64)
    intersect = _histc(pred[pred == label], num_classes)
    pred_area = _histc(pred, num_classes)
    label_area = _histc(label, num_classes)
    return intersect, pred_area + label_area - intersect, pred_area, label_area


def mmseg_metrics(preds: Iterable[np.ndarray], labels: Iterable[np.ndarray], num_classes: int,
                  ignore_index: int = IGNORE_INDEX) -> dict:
    """mmseg ``IoUMetric`` over a split: areas summed over the images, then the ratios.

    Returns:
        dict with ``iou`` / ``acc``: float64 [C] fractions in [0, 1], NaN where the union (resp. the label
        area) is 0; ``mIoU`` / ``mAcc`` / ``aAcc``: unrounded float64 percentages in [0, 100] (NaN when
        undefined; round to 2 decimals to compare with reported values); ``intersect`` / ``union`` /
        ``pred_area`` / ``label_area``: the summed float64 [C] areas.
    """
    totals = [np.zeros(num_classes) for _ in range(4)]
    for pred, label in zip(preds, labels):
        for total, area in zip(totals, mmseg_areas(pred, label, num_classes, ignore_index)):
            total += area
    intersect, union, pred_area, label_area = totals
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersect / union
        acc = intersect / label_area
        all_acc = intersect.sum() / label_area.sum()
    with warnings.catch_warnings():  # an all-NaN slice gives NaN, as in mmseg
        warnings.simplefilter("ignore", RuntimeWarning)
        miou = np.nanmean(iou) * 100
        macc = np.nanmean(acc) * 100
    return {"iou": iou, "acc": acc, "mIoU": float(miou), "mAcc": float(macc), "aAcc": float(all_acc * 100),
            "intersect": intersect, "union": union, "pred_area": pred_area, "label_area": label_area}
