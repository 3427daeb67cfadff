"""Test-time LightningDataModules for eight open-vocabulary segmentation benchmarks.

Self-contained (no dependency on any model package)::

    from datamodules import build_datamodule, BENCHMARKS
    dm = build_datamodule("voc21", data_root="data/VOCdevkit/VOC2012")
    dm.setup("test")
    sample = dm.test_dataset[0]   # image [3,h,w] uint8, label [H0,W0] int64, id, ori_size, index, path
"""

from .base import DatasetCountWarning, SegmentationDataModule, default_data_root
from .benchmarks import (ADE20KDataModule, CityscapesDataModule, COCOObjectDataModule,
                         COCOStuffDataModule, Context59DataModule, Context60DataModule, DATAMODULES,
                         VOC20DataModule, VOC21DataModule, build_datamodule)
from .dataset import DatasetLayoutError, SegmentationTestDataset, build_sample_list, list_collate
from .io import DataFileError, MissingFileError, read_image, read_label
from .presets import BENCHMARKS, BenchmarkPreset
from .sampler import UnrepeatedDistributedSampler
from .transforms import (IGNORE_INDEX, ResizeShortSide, apply_label_transform, build_test_transform,
                         label_lut, rescale_size, resize_short_side)

__all__ = [
    "BENCHMARKS", "BenchmarkPreset", "build_datamodule", "DATAMODULES", "SegmentationDataModule",
    "VOC21DataModule", "VOC20DataModule", "Context60DataModule", "Context59DataModule",
    "COCOObjectDataModule", "COCOStuffDataModule", "CityscapesDataModule", "ADE20KDataModule",
    "SegmentationTestDataset", "build_sample_list", "list_collate", "UnrepeatedDistributedSampler",
    "read_image", "read_label", "DataFileError", "MissingFileError", "DatasetLayoutError",
    "DatasetCountWarning", "default_data_root", "IGNORE_INDEX", "ResizeShortSide",
    "build_test_transform", "rescale_size", "resize_short_side", "label_lut", "apply_label_transform",
]
