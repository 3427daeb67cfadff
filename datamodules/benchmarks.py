"""One thin LightningDataModule subclass per benchmark, and ``build_datamodule``."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from .base import SegmentationDataModule
from .custom import card_preset, read_card
from .presets import BENCHMARKS, BenchmarkPreset


def _benchmark_datamodule(key: str, name: str) -> type[SegmentationDataModule]:
    """``class <name>(SegmentationDataModule): preset = BENCHMARKS[key]``: one importable class per benchmark."""
    doc = f"LightningDataModule of the {key} test split (a :class:`SegmentationDataModule` with its preset)."
    return type(name, (SegmentationDataModule,), {"preset": BENCHMARKS[key], "__module__": __name__, "__doc__": doc})


#: benchmark key -> its LightningDataModule class.
DATAMODULES: dict[str, type[SegmentationDataModule]] = {key: _benchmark_datamodule(key, name) for key, name in {
    "voc21": "VOC21DataModule", "voc20": "VOC20DataModule", "context60": "Context60DataModule",
    "context59": "Context59DataModule", "coco_object": "COCOObjectDataModule", "coco_stuff": "COCOStuffDataModule",
    "cityscapes": "CityscapesDataModule", "ade20k": "ADE20KDataModule", "ade847": "ADE847DataModule",
    "context459": "Context459DataModule",
}.items()}
(VOC21DataModule, VOC20DataModule, Context60DataModule, Context59DataModule, COCOObjectDataModule,
 COCOStuffDataModule, CityscapesDataModule, ADE20KDataModule, ADE847DataModule, Context459DataModule) = DATAMODULES.values()

_DM_KWARGS = {"pin_memory", "long_side_cap"}
_PRESET_FIELDS = {f.name for f in dataclasses.fields(BenchmarkPreset)} - {"key"}


def _build_custom(name: str, data_root, batch_size: int, num_workers: int,
                  overrides: dict[str, Any]) -> SegmentationDataModule:
    dm_kwargs = {k: overrides.pop(k) for k in list(overrides) if k in _DM_KWARGS}
    if name != "custom":  # a dataset card; keyword arguments override its keys
        spec = read_card(name)
        if data_root is not None:
            spec["data_root"] = data_root
        spec.update(overrides)
    else:
        spec = dict(overrides, data_root=data_root)
    preset, root = card_preset(spec)
    return SegmentationDataModule(preset=preset, data_root=root, batch_size=batch_size, num_workers=num_workers,
                                  **dm_kwargs)


def build_datamodule(name: str, data_root: str | os.PathLike | None = None, batch_size: int = 1,
                     num_workers: int = 2, **overrides: Any) -> SegmentationDataModule:
    """Datamodule for benchmark ``name`` (a key of ``BENCHMARKS``), ``"custom"`` (a user dataset described
    by keyword arguments, see :func:`datamodules.custom.custom_preset`) or the path of a JSON dataset card.

    ``overrides`` may hold datamodule options (``pin_memory``, ``long_side_cap``) or preset
    fields to change (e.g. ``short_side=448``), which yields a modified frozen preset.
    """
    name = os.fspath(name)
    if name == "custom" or name.endswith(".json"):
        return _build_custom(name, data_root, batch_size, num_workers, overrides)
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(BENCHMARKS)}, 'custom' "
                         "or a dataset card (.json)")
    dm_kwargs = {k: overrides.pop(k) for k in list(overrides) if k in _DM_KWARGS}
    unknown = set(overrides) - _PRESET_FIELDS
    if unknown:
        raise TypeError(f"unknown option(s) for build_datamodule: {sorted(unknown)}; "
                        f"accepted: {sorted(_DM_KWARGS | _PRESET_FIELDS)}")
    # a registered (installed or run-time) benchmark: the generic datamodule with its spec
    cls = DATAMODULES.get(name) or type(name, (SegmentationDataModule,), {"preset": BENCHMARKS[name]})
    preset = dataclasses.replace(cls.preset, **overrides) if overrides else None
    return cls(preset=preset, data_root=data_root, batch_size=batch_size, num_workers=num_workers, **dm_kwargs)
