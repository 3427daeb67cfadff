"""The metric's functional core (proxyclip_pl.iou) is the metric: per-image counts sum to the metric's states,
results from summed states equal compute(), and the public state API replaces torchmetrics' private fields."""
from __future__ import annotations

import pytest
import torch

from proxyclip_pl.iou import image_counts, image_row, results_from_states
from proxyclip_pl.metrics import SegmentationIoU


@pytest.mark.parametrize("histc", [False, True])
def test_counts_sum_to_the_metric_and_results_equal_compute(histc):
    g = torch.Generator().manual_seed(0)
    c = 7
    metric = SegmentationIoU(c, num_samples=4, ignore_index=255, mmseg_histc=histc, confusion=True)
    total: dict[str, torch.Tensor] = {}
    for i in range(4):
        pred = torch.randint(0, c, (13, 17), generator=g)
        target = torch.randint(0, c, (13, 17), generator=g)
        target[0, :3] = 255
        if histc:
            target[1, :4] = 65535  # outside the class range: dropped from the label histogram only
        metric.update(pred, target, i)
        for name, value in image_counts(pred, target, c, 255, histc, confusion=True).items():
            total[name] = total.get(name, 0) + value
        row = image_row(image_counts(pred, target, c, 255, mmseg_histc=True), int((target != 255).sum()))
        assert row["pixels"] == 13 * 17 - 3 and 0 <= row["miou"] <= 100
    states = metric.states()
    for name, value in total.items():
        assert torch.equal(states[name], value), name
    assert states["num_images"].item() == 4 and states["seen"].tolist() == [1, 1, 1, 1]
    expected = metric.compute()
    got = results_from_states(states, num_samples=4)
    for key in ("mIoU", "mAcc", "aAcc", "per_class_iou", "per_class_acc", "num_images"):
        assert got[key] == expected[key], key
    assert torch.equal(got["confusion"], expected["confusion"])


def test_states_can_be_added_back_and_unknown_states_are_refused():
    a = SegmentationIoU(3, confusion=True)
    a.update(torch.tensor([[0, 1], [2, 2]]), torch.tensor([[0, 1], [1, 2]]))
    b = SegmentationIoU(3, confusion=True)
    b.add_states(a.states())
    assert all(torch.equal(a.states()[k], b.states()[k]) for k in a.state_names())
    with pytest.raises(ValueError, match="no state 'seen'"):
        b.add_states({"seen": torch.zeros(2, dtype=torch.int64)})
    assert results_from_states(b.states())["mIoU"] == a.compute()["mIoU"]
