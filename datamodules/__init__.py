"""Test-time LightningDataModules for ten open-vocabulary segmentation benchmarks (the paper's eight, ADE-847, PC-459).

Self-contained (no dependency on any model package)::

    from datamodules import build_datamodule, BENCHMARKS
    dm = build_datamodule("voc21", data_root="data/VOCdevkit/VOC2012")
    dm.setup("test")
    sample = dm.test_dataset[0]   # image [3,h,w] uint8, label [H0,W0] int64, id, ori_size, index, path
"""

from typing import TYPE_CHECKING

from .lazy import lazy_attributes

# Names are imported on first use: `from datamodules.resize import ...` (the model's predict path)
# must not pull in Lightning and albumentations.
_SUBMODULE_OF = {
    "DatasetCountWarning": "base", "SegmentationDataModule": "base", "default_data_root": "base",
    "ADE20KDataModule": "benchmarks", "ADE847DataModule": "benchmarks",
    "Context459DataModule": "benchmarks", "MAIN_BENCHMARKS": "presets", "CityscapesDataModule": "benchmarks", "COCOObjectDataModule": "benchmarks",
    "COCOStuffDataModule": "benchmarks", "Context59DataModule": "benchmarks", "Context60DataModule": "benchmarks",
    "DATAMODULES": "benchmarks", "VOC20DataModule": "benchmarks", "VOC21DataModule": "benchmarks",
    "build_datamodule": "benchmarks",
    "DatasetCardError": "custom", "custom_preset": "custom", "read_card": "custom",
    "DatasetLayoutError": "dataset", "SegmentationTestDataset": "dataset", "build_sample_list": "dataset",
    "list_collate": "dataset",
    "DataFileError": "io", "MissingFileError": "io", "read_image": "io", "read_label": "io",
    "array_to_rgb_uint8": "io",
    "BENCHMARKS": "presets", "BenchmarkPreset": "presets", "BenchmarkSpec": "presets",
    "register_benchmark": "registry", "benchmark_sources": "registry",
    "UnrepeatedDistributedSampler": "sampler",
    "IGNORE_INDEX": "transforms", "ResizeShortSide": "transforms", "apply_label_transform": "transforms",
    "build_test_transform": "transforms", "label_lut": "transforms",
    "rescale_size": "resize", "resize_short_side": "resize",
}
__getattr__, __dir__ = lazy_attributes(__name__, _SUBMODULE_OF)


if TYPE_CHECKING:  # pragma: no cover
    from .base import DatasetCountWarning, SegmentationDataModule, default_data_root
    from .benchmarks import DATAMODULES, build_datamodule
    from .presets import BENCHMARKS, BenchmarkPreset, BenchmarkSpec
    from .registry import benchmark_sources, register_benchmark

__all__ = [
    "BENCHMARKS", "BenchmarkPreset", "BenchmarkSpec", "register_benchmark", "benchmark_sources", "build_datamodule", "DATAMODULES", "SegmentationDataModule",
    "VOC21DataModule", "VOC20DataModule", "Context60DataModule", "Context59DataModule",
    "COCOObjectDataModule", "COCOStuffDataModule", "CityscapesDataModule", "ADE20KDataModule",
    "ADE847DataModule", "Context459DataModule", "MAIN_BENCHMARKS",
    "SegmentationTestDataset", "build_sample_list", "list_collate", "UnrepeatedDistributedSampler",
    "read_image", "read_label", "array_to_rgb_uint8", "DataFileError", "MissingFileError", "DatasetLayoutError",
    "DatasetCountWarning", "default_data_root", "DatasetCardError", "custom_preset", "read_card", "IGNORE_INDEX", "ResizeShortSide",
    "build_test_transform", "rescale_size", "resize_short_side", "label_lut", "apply_label_transform",
]
