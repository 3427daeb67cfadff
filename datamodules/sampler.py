"""A non-padding distributed sampler for evaluation.

``torch.utils.data.DistributedSampler`` pads the index list by repeating its first
indices, so under DDP some samples would be evaluated twice (docs/dataset_notes.md,
'Distributed evaluation').  This
subclass gives rank ``r`` exactly the indices ``r, r + W, r + 2W, ...``: every sample
goes to exactly one rank, shards differ in length by at most one.  Being a
``DistributedSampler`` subclass, Lightning leaves it in place.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sized

import torch
from torch.utils.data import DistributedSampler


class UnrepeatedDistributedSampler(DistributedSampler):
    """Strided sharding without padding or dropping.

    Unlike Lightning's sampler of the same name, a rank may receive zero samples when
    ``len(dataset) < num_replicas`` (a warning is issued). Lightning skips the whole test loop,
    epoch hooks included, on such a rank, so it never joins an end-of-epoch collective (a metric's
    ``compute()``) and the other ranks wait for it: callers that reduce across ranks must keep
    ``num_replicas <= len(dataset)`` (``scripts/test.py`` refuses such runs up front).
    Do not use it for training.
    """

    def __init__(self, dataset: Sized, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = False, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=False)
        self.total_size = len(dataset)
        self.num_samples = len(range(self.rank, self.total_size, self.num_replicas))
        if self.num_samples == 0 and self.total_size > 0:
            warnings.warn(
                f"rank {self.rank} of {self.num_replicas} receives no samples "
                f"(dataset has {self.total_size}); it will miss any end-of-epoch collective, "
                "so use at most as many processes as samples.",
                stacklevel=2,
            )

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(self.total_size, generator=g).tolist()
        else:
            indices = list(range(self.total_size))
        return iter(indices[self.rank:self.total_size:self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples
