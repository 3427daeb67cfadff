"""The shared LightningDataModule: one class parameterised by a :class:`BenchmarkPreset`."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch.distributed as dist
from torch.utils.data import DataLoader

from .custom import sample_problems
from .dataset import (DatasetLayoutError, SegmentationTestDataset, _layout_error, build_sample_list, list_collate,
                      missing_files, problems_error)
from .presets import BenchmarkPreset
from .sampler import UnrepeatedDistributedSampler
from .transforms import build_test_transform

DATA_ENV_VAR = "PROXYCLIP_DATA"


class DatasetCountWarning(UserWarning):
    """Fewer samples than the benchmark's full validation split were found."""


def default_data_root(preset: BenchmarkPreset) -> Path:
    """``$PROXYCLIP_DATA/<sub_path>`` if the variable is set, else ``data/<sub_path>``."""
    base = os.environ.get(DATA_ENV_VAR) or "data"
    return Path(base) / preset.sub_path


class SegmentationDataModule(pl.LightningDataModule):
    """Test-only datamodule for one OVSS benchmark.

    ``setup()`` verifies the layout and builds ``test_dataset``; ``test_dataloader()``
    (also used for validate/predict) yields lists of sample dicts (``list_collate``) and,
    when ``torch.distributed`` is initialised with several processes, shards with a
    non-padding :class:`UnrepeatedDistributedSampler` so each sample is seen exactly once.
    """

    preset: BenchmarkPreset | None = None  # set by the per-benchmark subclasses

    def __init__(self, preset: BenchmarkPreset | None = None, data_root: str | os.PathLike | None = None,
                 batch_size: int = 1, num_workers: int = 2, pin_memory: bool = False,
                 long_side_cap: int = 2048) -> None:
        super().__init__()
        preset = preset if preset is not None else type(self).preset
        if preset is None:
            raise TypeError("SegmentationDataModule needs a BenchmarkPreset")
        if preset.is_custom and not preset.sub_path and data_root is None:
            # (a registered benchmark's sub_path is its data_root, or its key under $PROXYCLIP_DATA / data/)
            raise TypeError(f"the user dataset {preset.key!r} needs data_root")
        self.preset = preset
        self.data_root = Path(data_root) if data_root is not None else default_data_root(preset)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.long_side_cap = int(long_side_cap)
        self.test_dataset: SegmentationTestDataset | None = None

    # ---- metadata -----------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        """Standard class names in label order (MMSegmentation spelling)."""
        return list(self.preset.class_names)

    @property
    def num_classes(self) -> int:
        return self.preset.num_classes

    @property
    def vocabulary_file(self) -> Path:
        return self.preset.vocabulary_file

    # ---- layout ---------------------------------------------------------------------
    def verify(self) -> list[tuple[str, Path, Path]]:
        """Check folders, split file, image/label pairing and the expected count.

        Returns the sample list.  Raises :class:`DatasetLayoutError` (naming the missing
        path and the preparation command) on a missing/malformed layout or a count above
        the full split, and one multi-line report (:func:`~datamodules.dataset.problems_error`)
        for the problems of the samples' files (missing files; for a user dataset also
        unreadable files, size mismatches and label values); warns with
        :class:`DatasetCountWarning` on a subset.
        """
        p, root = self.preset, self.data_root
        samples = build_sample_list(p, root)
        if not samples:
            raise _layout_error(p, root, f"no samples found under {root / p.img_dir}"
                                + (f" (split file {root / p.split_file} is empty)" if p.split_file else
                                   f" (no files ending with {p.img_suffix!r})"))
        ids = [s[0] for s in samples]
        if len(set(ids)) != len(ids) and p.split_file is not None:
            dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise _layout_error(p, root, f"split file {root / p.split_file} lists ids more than once: {dup}")
        problems = self._sample_problems(samples)
        if any(problems.values()):
            raise problems_error(p, root, problems)
        n, expected = len(samples), p.expected_num_images
        if p.is_custom:
            return samples
        if n > expected:
            raise _layout_error(p, root, f"found {n} samples, more than the {expected} of the standard "
                                f"{p.key} validation split; stray files change the sample set")
        if n < expected:
            warnings.warn(f"[{p.key}] found {n} of the {expected} validation images under {root}; "
                          "results will not be comparable with published numbers.",
                          DatasetCountWarning, stacklevel=2)
        return samples

    def _sample_problems(self, samples: list[tuple[str, Path, Path]]) -> dict[str, list[str]]:
        """Kind of problem -> descriptions naming the files, every kind collected before anything is raised.

        A benchmark: its missing images and labels only (decoding thousands of files here would double the
        start-up; a bad file fails when it is read, naming itself). A user dataset: every image and label
        decoded once (:func:`~datamodules.custom.sample_problems`).
        """
        if not self.preset.is_custom:
            return missing_files(samples)
        dataset = SegmentationTestDataset(self.preset, self.data_root, transform=lambda image: {"image": image},
                                          samples=samples)
        return sample_problems(dataset)

    def setup(self, stage: str | None = None) -> None:
        if self.test_dataset is None:
            samples = self.verify()
            self.test_dataset = SegmentationTestDataset(
                self.preset, self.data_root,
                transform=build_test_transform(self.preset.short_side, self.long_side_cap),
                samples=samples)

    # ---- loaders ----------------------------------------------------------------------
    def _eval_dataloader(self) -> DataLoader:
        if self.test_dataset is None:
            self.setup("test")
        sampler = None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            sampler = UnrepeatedDistributedSampler(self.test_dataset, num_replicas=dist.get_world_size(),
                                                   rank=dist.get_rank(), shuffle=False)
        return DataLoader(self.test_dataset, batch_size=self.batch_size, shuffle=False, sampler=sampler,
                          num_workers=self.num_workers, collate_fn=list_collate,
                          pin_memory=self.pin_memory, persistent_workers=False)

    def test_dataloader(self) -> DataLoader:
        return self._eval_dataloader()

    def val_dataloader(self) -> DataLoader:
        return self._eval_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self._eval_dataloader()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key={self.preset.key!r}, data_root={str(self.data_root)!r})"


__all__ = ["SegmentationDataModule", "DatasetLayoutError", "DatasetCountWarning", "default_data_root"]


