"""Benchmarks that share their images (VOC21/VOC20, Context60/Context59, COCO-Object/COCO-Stuff) in one dataset.

A shared pass encodes each image once for several benchmarks; it needs each image once, resized once, with
every benchmark's own label. :class:`SharedImagesDataset` gives exactly that: the first benchmark's sample
plus ``labels``, one label per benchmark (each through its own label transform and checks).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from .dataset import SegmentationTestDataset
from .io import DataFileError


def _base(dataset: Dataset, index: int) -> tuple[SegmentationTestDataset, int]:
    """The benchmark dataset (and its index) behind ``dataset[index]``, through any ``Subset`` wrappers."""
    while isinstance(dataset, Subset):
        dataset, index = dataset.dataset, dataset.indices[index]
    return dataset, index


def image_list(dataset: Dataset) -> list[tuple[str, str]]:
    """(id, image path) of every sample of a benchmark dataset (or a ``Subset`` of one), in dataset order."""
    entries = []
    for position in range(len(dataset)):
        base, index = _base(dataset, position)
        sid, path, _label = base.samples[index]
        entries.append((sid, str(path)))
    return entries


class SharedImagesDataset(Dataset):
    """The same images seen by several benchmarks, each sample carrying every benchmark's label.

    Args:
        datasets: one test dataset per benchmark (or ``Subset``s of them): same length, same image ids and
            image files in the same order (checked), and the same test resize (the first one's is used).

    A sample is the first dataset's sample (see :mod:`datamodules.dataset`) plus
    ``labels``: a list of int64 tensors [H0, W0], one per dataset, in the order of ``datasets``.
    """

    def __init__(self, datasets: Sequence[Dataset]) -> None:
        if not datasets:
            raise ValueError("SharedImagesDataset needs at least one dataset")
        first = image_list(datasets[0])
        for other in datasets[1:]:
            if image_list(other) != first:
                raise ValueError("the datasets of a shared pass must list the same image files in the same order")
        self.datasets = list(datasets)

    def __len__(self) -> int:
        return len(self.datasets[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.datasets[0][index]
        labels = [sample["label"]]
        for dataset in self.datasets[1:]:
            base, base_index = _base(dataset, index)
            label = base.load_label(base_index)
            if tuple(label.shape) != tuple(sample["ori_size"]):
                raise DataFileError(f"label {base.samples[base_index][2]} is {label.shape[1]}x{label.shape[0]} but "
                                    f"its image {sample['path']} is {sample['ori_size'][1]}x{sample['ori_size'][0]}")
            labels.append(torch.from_numpy(label.astype(np.int64)))
        sample["labels"] = labels
        return sample
