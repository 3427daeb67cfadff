"""Tests for proxyclip_pl.metrics.SegmentationIoU against the NumPy port of MMSeg's IoUMetric (tests/references.py)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from references import mmseg_metrics

from proxyclip_pl.metrics import SegmentationIoU, metrics_from_areas

IGNORE = 255


def _assert_nan_equal(a, b, tol=1e-9):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=0, atol=tol)


def _assert_scalar(ours: float, ref: float, tol: float):
    if math.isnan(ref):
        assert math.isnan(ours)
    else:
        assert abs(ours - ref) <= tol, (ours, ref)


def check_against_reference(metric: SegmentationIoU, preds, labels, num_classes: int):
    out = metric.compute()
    ref = mmseg_metrics(preds, labels, num_classes)
    # Unrounded internals (float64 both sides): agreement far below 1e-6.
    _assert_nan_equal(out["iou"].numpy(), ref["iou"], tol=1e-12)
    _assert_nan_equal(out["acc"].numpy(), ref["acc"], tol=1e-12)
    raw = metrics_from_areas(metric.intersect, metric.pred_area, metric.label_area)
    for k in ("mIoU", "mAcc", "aAcc"):
        _assert_scalar(raw[k], ref[k], 1e-6)
        # Rounded output is the 2-decimal rounding of the exact value ...
        _assert_scalar(out[k], round(float(ref[k]), 2) if not math.isnan(ref[k]) else math.nan, 1e-9)
        # ... and within 0.005 of mmseg's np.round (docs/dataset_notes.md, 'The metric').
        _assert_scalar(out[k], float(np.round(ref[k], 2)), 0.005 + 1e-9)
    for key, arr in (("per_class_iou", ref["iou"]), ("per_class_acc", ref["acc"])):
        assert len(out[key]) == num_classes
        for v, r in zip(out[key], arr):
            if np.isnan(r):
                assert v is None
            else:
                assert isinstance(v, float)
                assert abs(v - round(float(r) * 100, 2)) <= 1e-9
    assert out["num_images"] == len(preds)
    return out, ref


# --------------------------------------------------------------------------------------------
# Random maps vs the reference
# --------------------------------------------------------------------------------------------
def _random_dataset(seed: int, num_classes: int = 7):
    """Images of varying sizes covering the tricky cases.

    GT uses classes {0..4}; predictions use {0,1,2,3,5}. Hence: class 4 is in the GT but never
    predicted (IoU 0), class 5 is predicted but absent from the GT (IoU 0 counted in mIoU, Acc
    NaN excluded from mAcc), class 6 is absent from both (NaN, excluded). ~20% ignore pixels,
    one fully ignored image, one image without ignore pixels.
    """
    rng = np.random.default_rng(seed)
    preds, labels = [], []
    pred_classes = np.array([0, 1, 2, 3, 5])
    for k in range(6):
        h, w = rng.integers(5, 40, size=2)
        gt = rng.integers(0, 5, size=(h, w)).astype(np.uint8)
        pred = pred_classes[rng.integers(0, len(pred_classes), size=(h, w))].astype(np.int64)
        # Make predictions correlated with the GT so IoUs are not all tiny.
        agree = rng.random((h, w)) < 0.5
        pred[agree] = np.where(gt[agree] == 4, 0, gt[agree])
        if k == 2:
            gt[:] = IGNORE  # all-ignored image
        elif k != 4:
            gt[rng.random((h, w)) < 0.2] = IGNORE
        preds.append(pred)
        labels.append(gt)
    return preds, labels, num_classes


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_maps_match_mmseg_reference(seed):
    preds, labels, c = _random_dataset(seed)
    metric = SegmentationIoU(num_classes=c, num_samples=len(preds))
    for i, (p, g) in enumerate(zip(preds, labels)):
        metric.update(torch.from_numpy(p), torch.from_numpy(g), index=i)
    out, ref = check_against_reference(metric, preds, labels, c)
    # The constructed special cases really occur.
    assert out["per_class_iou"][4] == 0.0 and out["per_class_acc"][4] == 0.0
    assert out["per_class_iou"][5] == 0.0 and out["per_class_acc"][5] is None
    assert out["per_class_iou"][6] is None and out["per_class_acc"][6] is None
    # States are exact int64 counts.
    for name in ("intersect", "pred_area", "label_area", "num_images", "seen"):
        assert getattr(metric, name).dtype == torch.int64


def test_reduce_zero_label_dataset_matches_reference():
    """GT produced by the reduce_zero_label LUT (0 -> 255, v -> v-1, 255 stays 255)."""
    rng = np.random.default_rng(7)
    c = 5
    lut = np.arange(256, dtype=np.uint8) - 1
    lut[0] = IGNORE
    lut[IGNORE] = IGNORE
    preds, labels = [], []
    for _ in range(4):
        raw = rng.integers(0, c + 1, size=(17, 23)).astype(np.uint8)
        raw[rng.random(raw.shape) < 0.1] = IGNORE
        labels.append(lut[raw])
        preds.append(rng.integers(0, c, size=raw.shape))
    metric = SegmentationIoU(num_classes=c)
    for p, g in zip(preds, labels):
        metric.update(torch.from_numpy(p), torch.from_numpy(g))
    check_against_reference(metric, preds, labels, c)


def test_batched_update_equals_per_image_updates():
    rng = np.random.default_rng(3)
    c, b = 6, 4
    preds = rng.integers(0, c, size=(b, 11, 13))
    labels = rng.integers(0, c, size=(b, 11, 13)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.3] = IGNORE
    batched = SegmentationIoU(num_classes=c, num_samples=b)
    batched.update(torch.from_numpy(preds), torch.from_numpy(labels), index=torch.arange(b))
    single = SegmentationIoU(num_classes=c, num_samples=b)
    for i in range(b):
        single.update(torch.from_numpy(preds[i]), torch.from_numpy(labels[i]), index=i)
    for name in ("intersect", "pred_area", "label_area", "num_images", "seen"):
        assert torch.equal(getattr(batched, name), getattr(single, name)), name
    check_against_reference(batched, list(preds), list(labels), c)


# --------------------------------------------------------------------------------------------
# Hand-made exact cases
# --------------------------------------------------------------------------------------------
def test_hand_example_basic():
    # GT [0,1,2,3,0], pred [0,1,2,3,1], C=4:
    # I = [1,1,1,1], P = [1,2,1,1], L = [2,1,1,1], U = [2,2,1,1]
    m = SegmentationIoU(num_classes=4)
    m.update(torch.tensor([[0, 1, 2, 3, 1]]), torch.tensor([[0, 1, 2, 3, 0]]))
    out = m.compute()
    assert m.intersect.tolist() == [1, 1, 1, 1]
    assert m.pred_area.tolist() == [1, 2, 1, 1]
    assert m.label_area.tolist() == [2, 1, 1, 1]
    assert out["iou"].tolist() == [0.5, 0.5, 1.0, 1.0]
    assert out["acc"].tolist() == [0.5, 1.0, 1.0, 1.0]
    assert out["per_class_iou"] == [50.0, 50.0, 100.0, 100.0]
    assert out["per_class_acc"] == [50.0, 100.0, 100.0, 100.0]
    assert out["mIoU"] == 75.0
    assert out["mAcc"] == 87.5
    assert out["aAcc"] == 80.0
    assert out["num_images"] == 1


def test_hand_example_predicted_but_absent_and_absent_classes():
    # C=4. GT [0,0,1,1,255], pred [0,2,1,1,3]: class 2 predicted but absent from the GT,
    # class 3 only predicted on an ignored pixel (dropped -> absent from both).
    # I = [1,2,0,0], P = [1,2,1,0], L = [2,2,0,0], U = [2,2,1,0]
    m = SegmentationIoU(num_classes=4)
    m.update(torch.tensor([[0, 2, 1, 1, 3]]), torch.tensor([[0, 0, 1, 1, 255]], dtype=torch.uint8))
    out = m.compute()
    assert out["per_class_iou"] == [50.0, 100.0, 0.0, None]
    assert out["per_class_acc"] == [50.0, 100.0, None, None]
    # Class 2 counts as 0 in mIoU; class 3 (U == 0) is excluded: (0.5 + 1 + 0) / 3.
    assert out["mIoU"] == 50.0
    # mAcc excludes class 2 even though it was predicted: (0.5 + 1) / 2 = 75, whereas a
    # "macro accuracy" scoring the predicted-but-absent class as 0 would give 50.
    assert out["mAcc"] == 75.0
    assert out["aAcc"] == 75.0
    assert torch.isnan(out["iou"][3]) and torch.isnan(out["acc"][2])


def test_sums_not_per_image_means():
    # Image A: 1 pixel, class 0 right. Image B: 3 pixels of class 0, all predicted 1.
    m = SegmentationIoU(num_classes=2)
    m.update(torch.tensor([[0]]), torch.tensor([[0]]))
    m.update(torch.tensor([[1, 1, 1]]), torch.tensor([[0, 0, 0]]))
    out = m.compute()
    # Dataset level: I=[1,0], P=[1,3], L=[4,0] -> IoU0 = 1/4, IoU1 = 0/3.
    assert out["per_class_iou"] == [25.0, 0.0]
    assert out["mIoU"] == 12.5
    assert out["aAcc"] == 25.0
    assert out["mAcc"] == 25.0


def test_all_ignored_gives_nan():
    m = SegmentationIoU(num_classes=3)
    m.update(torch.zeros(4, 5, dtype=torch.int64), torch.full((4, 5), IGNORE))
    out = m.compute()
    assert math.isnan(out["mIoU"]) and math.isnan(out["mAcc"]) and math.isnan(out["aAcc"])
    assert out["per_class_iou"] == [None, None, None]
    assert out["per_class_acc"] == [None, None, None]
    assert out["num_images"] == 1


def test_mmseg_histc_mode_matches_reference_on_out_of_range_labels():
    # Labels >= C that are not ignore_index (ADE-847's 65535): mmseg's histc drops them from L (and I) while
    # the predictions there still count in P. Hand example, C = 4, GT [0, 1, 2, 3, 7], pred [0, 1, 2, 3, 1]:
    # I = [1, 1, 1, 1], P = [1, 2, 1, 1], L = [1, 1, 1, 1] -> U = [1, 2, 1, 1], IoU = [1, 0.5, 1, 1].
    pred, label = np.array([[0, 1, 2, 3, 1]]), np.array([[0, 1, 2, 3, 7]])
    m = SegmentationIoU(num_classes=4, mmseg_histc=True)
    m.update(torch.from_numpy(pred), torch.from_numpy(label))
    assert m.intersect.tolist() == [1, 1, 1, 1] and m.pred_area.tolist() == [1, 2, 1, 1]
    assert m.label_area.tolist() == [1, 1, 1, 1] and m.compute()["per_class_iou"] == [100.0, 50.0, 100.0, 100.0]
    np.testing.assert_allclose(mmseg_metrics([pred], [label], 4)["iou"], [1, 0.5, 1, 1])
    with pytest.raises(ValueError, match="target"):  # the strict default refuses such a label
        SegmentationIoU(num_classes=4).update(torch.from_numpy(pred), torch.from_numpy(label))
    # Random maps with ignored pixels, out-of-range labels (5, 9, 65535) and an ignore_index inside the range.
    rng = np.random.default_rng(13)
    preds = [rng.integers(0, 5, size=(9, 11)) for _ in range(3)]
    labels = [rng.choice([0, 1, 2, 3, 4, 5, 9, 255, 65535], size=(9, 11)) for _ in range(3)]
    for ignore_index in (255, 65535, 2):
        m = SegmentationIoU(num_classes=5, mmseg_histc=True, ignore_index=ignore_index)
        for p, g in zip(preds, labels):
            m.update(torch.from_numpy(p), torch.from_numpy(g))
        ref = mmseg_metrics(preds, labels, 5, ignore_index)
        for name in ("intersect", "pred_area", "label_area"):
            np.testing.assert_array_equal(getattr(m, name).numpy(), ref[name], err_msg=name)
        _assert_nan_equal(m.compute()["iou"].numpy(), ref["iou"], tol=1e-12)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [4, 255, -1])
def test_out_of_range_prediction_raises(bad):
    m = SegmentationIoU(num_classes=4)
    with pytest.raises(ValueError, match="prediction"):
        m.update(torch.tensor([[0, 1, 2, 3, bad]]), torch.tensor([[0, 1, 2, 3, 0]]))
    # Also on an ignored pixel: a sentinel "no prediction" value is a bug wherever it is.
    with pytest.raises(ValueError, match="prediction"):
        m.update(torch.tensor([[0, 1, 2, 3, bad]]), torch.tensor([[0, 1, 2, 3, IGNORE]]))
    # Nothing was accumulated by the failed updates.
    assert m.num_images.item() == 0 and m.pred_area.sum().item() == 0


@pytest.mark.parametrize("bad", [4, 254, -1])
def test_out_of_range_target_raises(bad):
    m = SegmentationIoU(num_classes=4)
    with pytest.raises(ValueError, match="target"):
        m.update(torch.tensor([[0, 1, 2, 3, 0]]), torch.tensor([[0, 1, 2, 3, bad]]))


def test_input_type_shape_and_ctor_checks():
    m = SegmentationIoU(num_classes=4)
    with pytest.raises(TypeError):
        m.update(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="shape"):
        m.update(torch.zeros(2, 2, dtype=torch.int64), torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError):
        m.update(torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="ignore_index"):
        SegmentationIoU(num_classes=4, ignore_index=0)
    with pytest.raises(ValueError):
        SegmentationIoU(num_classes=0)


def test_works_under_deterministic_algorithms():
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        m = SegmentationIoU(num_classes=171, num_samples=1)
        m.update(torch.randint(0, 171, (64, 64)), torch.randint(0, 171, (64, 64)), index=0)
        assert m.compute()["num_images"] == 1
    finally:
        torch.use_deterministic_algorithms(prev)


def test_forward_only_accumulates():
    m = SegmentationIoU(num_classes=4, num_samples=2)
    assert m(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]), 0) is None
    assert m(torch.tensor([[2, 3]]), torch.tensor([[2, 2]]), 1) is None
    out = m.compute()
    assert out["num_images"] == 2 and out["per_class_iou"] == [100.0, 100.0, 50.0, 0.0]
    m.reset()
    assert m.num_images.item() == 0 and m.intersect.sum().item() == 0 and m.seen.sum().item() == 0


# --------------------------------------------------------------------------------------------
# `seen`: uniqueness / completeness
# --------------------------------------------------------------------------------------------
def _seen_metric(indices, n=4):
    m = SegmentationIoU(num_classes=3, num_samples=n)
    for i in indices:
        m.update(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 1]]), index=i)
    return m


def test_seen_exact_is_fine():
    assert _seen_metric([2, 0, 3, 1]).compute()["num_images"] == 4


def test_seen_duplicate_raises():
    with pytest.raises(RuntimeError, match=r"duplicated index\(es\) \[0\]"):
        _seen_metric([0, 1, 2, 3, 0]).compute()


def test_seen_missing_raises():
    with pytest.raises(RuntimeError, match=r"missing index\(es\) \[1, 3\]"):
        _seen_metric([0, 2]).compute()


def test_seen_duplicate_within_a_batch_raises():
    m = SegmentationIoU(num_classes=3, num_samples=2)
    m.update(torch.zeros(2, 3, 3, dtype=torch.int64), torch.zeros(2, 3, 3, dtype=torch.int64), index=[1, 1])
    with pytest.raises(RuntimeError, match=r"duplicated.*\[1\].*missing.*\[0\]"):
        m.compute()


def test_seen_index_required_and_in_range():
    m = SegmentationIoU(num_classes=3, num_samples=2)
    x = torch.zeros(2, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match="index"):
        m.update(x, x)
    with pytest.raises(ValueError, match="out of range"):
        m.update(x, x, index=2)
    with pytest.raises(ValueError):
        m.update(x.expand(2, 2, 2), x.expand(2, 2, 2), index=[0])


# --------------------------------------------------------------------------------------------
# Distributed sum (simulated ranks)
# --------------------------------------------------------------------------------------------
def _shard(preds, labels, rank, world):
    """UnrepeatedDistributedSampler order: rank r gets r, r+W, ..."""
    return [(i, preds[i], labels[i]) for i in range(rank, len(preds), world)]


def _fill(metric, shard):
    for i, p, g in shard:
        metric.update(torch.from_numpy(p), torch.from_numpy(g), index=i)


def test_merge_state_two_ranks_equals_single_metric():
    preds, labels, c = _random_dataset(11)
    n = len(preds)
    single = SegmentationIoU(num_classes=c, num_samples=n)
    _fill(single, _shard(preds, labels, 0, 1))
    r0 = SegmentationIoU(num_classes=c, num_samples=n)
    r1 = SegmentationIoU(num_classes=c, num_samples=n)
    _fill(r0, _shard(preds, labels, 0, 2))
    _fill(r1, _shard(preds, labels, 1, 2))
    with pytest.raises(RuntimeError, match="missing"):  # one rank alone is incomplete
        r1.compute()
    r1.reset()
    _fill(r1, _shard(preds, labels, 1, 2))
    r0.merge_state(r1)
    a, b = r0.compute(), single.compute()
    for k in ("mIoU", "mAcc", "aAcc", "per_class_iou", "per_class_acc", "num_images"):
        assert a[k] == b[k], k
    assert torch.equal(a["iou"].nan_to_num(-1), b["iou"].nan_to_num(-1))
    check_against_reference(r0, preds, labels, c)


def _fake_two_rank_metrics(num_classes, num_samples):
    """Two metrics whose compute() goes through torchmetrics' real sync path (dist_reduce_fx),
    with an all-gather that returns [own state, the other rank's local state]."""
    metrics = []
    snapshots: list[dict] = [{}, {}]

    def make_gather(rank):
        names = None

        def gather(t, group=None):
            nonlocal names
            if names is None:
                names = itertools.cycle(list(metrics[rank]._reductions))
            other = snapshots[1 - rank][next(names)]
            return [t, other.to(t.device)] if rank == 0 else [other.to(t.device), t]

        return gather

    for rank in range(2):
        metrics.append(
            SegmentationIoU(
                num_classes=num_classes,
                num_samples=num_samples,
                dist_sync_fn=make_gather(rank),
                distributed_available_fn=lambda: True,
            )
        )

    def freeze():
        for r in range(2):
            snapshots[r].update({k: getattr(metrics[r], k).clone() for k in metrics[r]._reductions})

    return metrics, freeze


def test_simulated_ddp_sync_equals_single_metric():
    preds, labels, c = _random_dataset(5)
    n = len(preds)
    (r0, r1), freeze = _fake_two_rank_metrics(c, n)
    _fill(r0, _shard(preds, labels, 0, 2))
    _fill(r1, _shard(preds, labels, 1, 2))
    local_intersect = r0.intersect.clone()
    freeze()
    out0, out1 = r0.compute(), r1.compute()
    ref = mmseg_metrics(preds, labels, c)
    for out in (out0, out1):
        assert out["num_images"] == n
        _assert_nan_equal(out["iou"].numpy(), ref["iou"], tol=1e-12)
        assert out["mIoU"] == round(float(ref["mIoU"]), 2)
    assert out0["per_class_iou"] == out1["per_class_iou"]
    # compute() unsyncs afterwards: local state is untouched.
    assert torch.equal(r0.intersect, local_intersect)


def test_simulated_padding_sampler_is_caught():
    # DistributedSampler(drop_last=False) with 5 samples on 2 ranks: rank 1 gets 1, 3, 0.
    preds, labels, c = _random_dataset(9)
    preds, labels = preds[:5], labels[:5]
    (r0, r1), freeze = _fake_two_rank_metrics(c, 5)
    _fill(r0, [(i, preds[i], labels[i]) for i in (0, 2, 4)])
    _fill(r1, [(i, preds[i], labels[i]) for i in (1, 3, 0)])
    freeze()
    with pytest.raises(RuntimeError, match=r"duplicated index\(es\) \[0\]"):
        r0.compute()
