"""Distributed sharding: every sample on exactly one rank, no padding duplicates."""

import json
import warnings

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DistributedSampler

from datamodules import BENCHMARKS, DatasetCountWarning, UnrepeatedDistributedSampler, build_datamodule
from datamodules.synthetic import make_fake_benchmark


@pytest.mark.parametrize("n", [0, 1, 2, 5, 7, 1449])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_sampler_partitions_without_padding(n, world):
    data = list(range(n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty ranks warn
        shards = [list(UnrepeatedDistributedSampler(data, num_replicas=world, rank=r)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == data  # each index exactly once
    for r, s in enumerate(shards):
        assert s == list(range(r, n, world))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lens = [len(UnrepeatedDistributedSampler(data, num_replicas=world, rank=r)) for r in range(world)]
    assert lens == [len(s) for s in shards]
    assert max(lens) - min(lens) <= 1  # balanced: shard lengths differ by at most one


@pytest.mark.parametrize("n,world", [(5, 2), (7, 3), (10, 4), (1449, 8), (3, 3)])
def test_shuffled_sampler_still_partitions_every_epoch(n, world):
    # Every rank draws the same seeded permutation, so a shuffled epoch is still a partition; set_epoch
    # changes the order, never the coverage.
    orders = []
    for epoch in (0, 1):
        samplers = [UnrepeatedDistributedSampler(range(n), num_replicas=world, rank=r, shuffle=True, seed=3)
                    for r in range(world)]
        for sampler in samplers:
            sampler.set_epoch(epoch)
        shards = [list(s) for s in samplers]
        assert sorted(i for s in shards for i in s) == list(range(n))  # each index exactly once
        assert [len(s) for s in shards] == [len(s) for s in samplers] == [len(range(r, n, world)) for r in range(world)]
        orders.append(shards)
    if n > 5:  # (tiny splits may draw the same permutation twice)
        assert orders[0] != orders[1]


def test_sampler_is_a_distributed_sampler_and_warns_on_empty_rank():
    assert issubclass(UnrepeatedDistributedSampler, DistributedSampler)  # so Lightning leaves it in place
    with pytest.warns(UserWarning, match="rank 2 of 3 receives no samples"):
        UnrepeatedDistributedSampler([0, 1], num_replicas=3, rank=2)
    # 5 samples on 2 ranks (where torch's padding sampler repeats index 0): no repeat, no drop.
    shards = [list(UnrepeatedDistributedSampler(range(5), num_replicas=2, rank=r)) for r in range(2)]
    assert shards == [[0, 2, 4], [1, 3]]


class _Recorder(pl.LightningModule):
    """Records the dataset indices each rank evaluates into a JSON file per rank."""

    def __init__(self, out_dir: str):
        super().__init__()
        self.out_dir = out_dir
        self.seen: list[int] = []
        self.layer = torch.nn.Linear(1, 1)  # DDP needs a parameter

    def test_step(self, batch, batch_idx):
        assert isinstance(batch, list)
        self.seen.extend(int(s["index"]) for s in batch)

    def on_test_epoch_end(self):
        sampler = self.trainer.test_dataloaders.sampler
        with open(f"{self.out_dir}/rank{self.global_rank}.json", "w") as f:
            json.dump({"seen": self.seen, "sampler": type(sampler).__name__,
                       "world": self.trainer.world_size}, f)


@pytest.mark.slow
@pytest.mark.ddp
def test_two_process_ddp_sees_each_sample_once(tmp_path):
    n = 5  # odd: a padding sampler would duplicate sample 0 on rank 1
    root = make_fake_benchmark("voc21", tmp_path / "data", n, sizes=((24, 32), (20, 28)))
    dm = build_datamodule("voc21", data_root=root, batch_size=1, num_workers=0)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetCountWarning)
        trainer.test(_Recorder(str(tmp_path)), datamodule=dm)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world"] == 2 and r["sampler"] == "UnrepeatedDistributedSampler" for r in results)
    assert results[0]["seen"] == [0, 2, 4] and results[1]["seen"] == [1, 3]
    assert sorted(results[0]["seen"] + results[1]["seen"]) == list(range(n))
    with pytest.warns(DatasetCountWarning):
        dm.setup("test")  # setup ran in the spawned workers only; check the size here too
    assert len(dm.test_dataset) == n < BENCHMARKS["voc21"].expected_num_images
