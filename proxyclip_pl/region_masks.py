"""Class-agnostic region masks for CorrCLIP: mask providers, the label-map format, and the two mask operations of
the method (merging regions by DINO similarity, correcting a prediction by region).

A **mask provider** is any callable ``provider(image, image_id) -> masks``: ``image`` the original-size uint8 RGB
HxWx3 array, ``image_id`` the sample id (the image's file stem) or ``None``; ``masks`` an integer **label map**
[H, W] (0 = not covered by any mask, other values = region ids; the official ``instance_mask`` format) or bool
masks [M, H, W] (:func:`instance_map_from_masks`). Providers here: :class:`InstanceMaskFolder` (the official cached
SAM2 masks), :class:`SAM2MaskProvider` (online SAM2, extra ``[sam2]``) and :class:`NoMasks` (an ablation).
"""
from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

#: id given to the padding of a window (official ``forward_slide``) and offset of the merged regions' ids.
PAD_REGION = 10000
#: where the official cached masks come from
CACHED_MASKS = "region_masks.zip of the Hugging Face dataset dk258/CorrCLIP (hf download dk258/CorrCLIP " \
               "region_masks.zip --repo-type dataset --local-dir DIR)"

MaskProvider = Callable[[np.ndarray, "str | None"], Any]


def instance_map_from_masks(masks: Any) -> torch.Tensor:
    """Bool masks [M, H, W] (numpy or torch) -> int64 label map [H, W]: masks sorted by pixel count ascending
    (stable), painted with ids 1..M in that order (a larger mask overwrites a smaller one), unpainted pixels 0."""
    masks = torch.as_tensor(np.asarray(masks) if not isinstance(masks, torch.Tensor) else masks).bool()
    if masks.dim() != 3:
        raise ValueError(f"bool masks must be [M, H, W], got {tuple(masks.shape)}")
    label_map = torch.zeros(masks.shape[1:], dtype=torch.int64)
    order = sorted(range(masks.shape[0]), key=lambda i: int(masks[i].sum()))
    for region, index in enumerate(order, start=1):
        label_map[masks[index]] = region
    return label_map


def as_label_map(masks: Any, size: tuple[int, int] | None = None, what: str = "masks") -> torch.Tensor:
    """A provider's output (label map [H, W] or bool masks [M, H, W]) -> int64 label map [H, W], checked against
    the image's ``size`` (H, W) when given."""
    tensor = masks if isinstance(masks, torch.Tensor) else torch.as_tensor(np.asarray(masks))
    if tensor.dtype == torch.bool:
        label_map = instance_map_from_masks(tensor)
    elif tensor.dim() == 2 and not tensor.is_floating_point():
        label_map = tensor.to(torch.int64)
    else:
        raise ValueError(f"{what}: expected an integer label map [H, W] or bool masks [M, H, W], got "
                         f"{tensor.dtype} {tuple(tensor.shape)}")
    if size is not None and tuple(label_map.shape) != tuple(size):
        raise ValueError(f"{what} are {label_map.shape[0]}x{label_map.shape[1]} but the image is {size[0]}x{size[1]}")
    return label_map


@dataclass(frozen=True)
class InstanceMaskFolder:
    """Cached masks: ``<folder>/<image_id>.npz`` with key ``instance_mask`` (the official format)."""

    folder: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))

    def __call__(self, image: np.ndarray, image_id: str | None) -> np.ndarray:
        if image_id is None:
            raise ValueError(f"cached masks in {self.folder} are looked up by the image's file stem; pass image_id")
        path = self.folder / f"{image_id}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"no region mask for image {image_id}: {path} is missing (CorrCLIP's cached masks "
                                    f"come from {CACHED_MASKS}; or use --masks sam2)")
        with np.load(path) as data:
            if "instance_mask" not in data:
                raise ValueError(f"{path} has no 'instance_mask' array (keys: {', '.join(data.files)})")
            return data["instance_mask"]


@dataclass(frozen=True)
class NoMasks:
    """No region masks: one region (label 0) everywhere, i.e. CorrCLIP's scope reconstruction reduces to
    ``S > mean(S)`` and there is no map correction (an ablation, ``--masks none``)."""

    def __call__(self, image: np.ndarray, image_id: str | None) -> np.ndarray:
        return np.zeros(image.shape[:2], dtype=np.int64)


class SAM2MaskProvider(nn.Module):
    """Masks from a SAM2 automatic mask generator (anything with ``.generate(rgb) -> [{"segmentation": bool HxW,
    "area": int, ...}]``): one ``generate`` call on the original image, masks painted by ``area`` ascending (ids
    1..M), all zeros when there is none. SAM2's model (``generator.predictor.model``) is a submodule: it follows
    ``.to()`` with the segmenter that holds the provider, i.e. onto each process's device under Lightning."""

    def __init__(self, generator: Any) -> None:
        super().__init__()
        if not callable(getattr(generator, "generate", None)):
            raise TypeError("SAM2MaskProvider needs a generator with .generate(rgb) (SAM2AutomaticMaskGenerator)")
        self.generator = generator
        model = getattr(getattr(generator, "predictor", None), "model", None)
        self.model = model if isinstance(model, nn.Module) else None  # SAM2 reads its device off its parameters

    def forward(self, image: np.ndarray, image_id: str | None) -> np.ndarray:
        annotations = self.generator.generate(image)
        label_map = np.zeros(image.shape[:2], dtype=np.int64)
        for region, annotation in enumerate(sorted(annotations, key=lambda a: a["area"]), start=1):
            label_map[np.asarray(annotation["segmentation"], dtype=bool)] = region
        return label_map


#: The official online setting (``set_mask_generator('sam2')``).
SAM2_SETTINGS = dict(points_per_side=8, pred_iou_thresh=0.4, stability_score_thresh=0.4, multimask_output=False)
SAM2_CHECKPOINT = "sam2_hiera_large.pt"
SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_large.pt"


@functools.lru_cache(maxsize=None)
def sam2_mask_provider(config: str = "sam2_hiera_l.yaml", checkpoint: str = SAM2_CHECKPOINT) -> SAM2MaskProvider:
    """The official online provider: SAM2 Hiera-L, ``apply_postprocessing=False``, :data:`SAM2_SETTINGS` (built once
    per process, on the CPU: it moves with its segmenter). Needs the optional ``sam2`` package
    (``pip install 'proxyclip_pl[sam2]'``) and the checkpoint (``--masks sam2:PATH``; default ``./`` +
    :data:`SAM2_CHECKPOINT`)."""
    try:
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
        from sam2.build_sam import build_sam2
    except ImportError as exc:
        raise ValueError(f"--masks sam2 needs the sam2 package ({exc}): pip install 'proxyclip_pl[sam2]'") from None
    check_sam2_checkpoint(checkpoint)
    model = build_sam2(config, checkpoint, device="cpu", apply_postprocessing=False)
    return SAM2MaskProvider(SAM2AutomaticMaskGenerator(model=model, **SAM2_SETTINGS))


def check_sam2_checkpoint(checkpoint: str) -> None:
    """One-line errors, without importing it, when the ``sam2`` package or its checkpoint is missing."""
    if importlib.util.find_spec("sam2") is None:
        raise ValueError("--masks sam2 needs the sam2 package: pip install 'proxyclip_pl[sam2]'")
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"SAM2 checkpoint {checkpoint} not found: download {SAM2_URL} and pass "
                                f"--masks sam2:PATH (default: ./{SAM2_CHECKPOINT})")


def sam2_checkpoint(masks: str) -> str | None:
    """``sam2`` -> the default checkpoint, ``sam2:PATH`` -> ``PATH``, anything else -> ``None`` (not SAM2)."""
    name, _, path = masks.partition(":")
    return (path or SAM2_CHECKPOINT) if name.lower() == "sam2" else None


def check_mask_source(masks: str | None, folders: Sequence[str | None] = ()) -> None:
    """Torch-free check of ``--masks``: ``none``, ``sam2[:CHECKPOINT]`` (an existing checkpoint) or an existing folder, in which each of the benchmarks'
    cached-mask sub-folders ``folders`` (e.g. ``voc``; ``None``: the folder itself) resolves to a folder holding
    ``.npz`` masks (a one-line error otherwise)."""
    if masks is None:
        raise ValueError(f"CorrCLIP needs region masks: --masks DIR (the extracted {CACHED_MASKS}), --masks sam2 "
                         "(online SAM2) or --masks none (no masks, an ablation)")
    if masks.lower() == "none":
        return
    checkpoint = sam2_checkpoint(masks)
    if checkpoint is not None:
        return check_sam2_checkpoint(checkpoint)
    if not Path(masks).is_dir():
        raise FileNotFoundError(f"--masks {masks}: no such folder")
    for folder in dict.fromkeys(folders):
        mask_folder(masks, folder)


def mask_folder(masks: str, folder: str | None) -> Path:
    """The folder of cached masks for a benchmark: ``<masks>/<folder>`` when it exists, else ``masks`` itself (a
    dataset card's flat folder); a one-line error when it holds no ``.npz`` file."""
    root = Path(masks)
    chosen = root / folder if folder and (root / folder).is_dir() else root
    if next(chosen.glob("*.npz"), None) is None:
        where = f"neither {root / folder}/ nor {root}/ holds" if folder else f"{root}/ holds no"
        raise FileNotFoundError(f"--masks {masks}: {where} <image stem>.npz masks (CorrCLIP's cached masks: extract "
                                f"{CACHED_MASKS} into {root})")
    return chosen


def mask_source(masks: str | None, folder: str | None = None) -> MaskProvider:
    """The provider of ``--masks``: ``none`` -> :class:`NoMasks`, ``sam2[:CHECKPOINT]`` -> :func:`sam2_mask_provider`, a folder ->
    :class:`InstanceMaskFolder` of :func:`mask_folder` (the benchmark's sub-folder, e.g. ``voc``, when it exists)."""
    check_mask_source(masks)
    if masks.lower() == "none":
        return NoMasks()
    checkpoint = sam2_checkpoint(masks)
    if checkpoint is not None:
        return sam2_mask_provider(checkpoint=checkpoint)
    return InstanceMaskFolder(mask_folder(masks, folder))


def connected_components(adjacent: torch.Tensor) -> list[int]:
    """Component index of each node of a symmetric bool adjacency [n, n], numbered in order of the first node
    (DBSCAN with ``min_samples=1`` on a precomputed distance: every point is a core point)."""
    n = adjacent.shape[0]
    labels = [-1] * n
    current = 0
    for start in range(n):
        if labels[start] >= 0:
            continue
        labels[start], stack = current, [start]
        while stack:
            node = stack.pop()
            for other in torch.nonzero(adjacent[node]).flatten().tolist():
                if labels[other] < 0:
                    labels[other] = current
                    stack.append(other)
        current += 1
    return labels


def merge_regions(regions: torch.Tensor, features: torch.Tensor, eps: float) -> torch.Tensor:
    """CorrCLIP's mask merging on a feature grid.

    Args:
        regions: int [h, w] region ids of a window on the VFM grid.
        features: [h*w, C] L2-normalised VFM features (rows from the height).
        eps: regions whose normalised mean features have ``max(sim) - sim <= eps`` join (transitively).
    Returns:
        int [h, w]: unchanged with at most two ids; else every id but the smallest becomes ``10000 + component``.
    """
    ids = torch.unique(regions)
    if ids.numel() <= 2:
        return regions
    flat = regions.flatten()
    members = [flat == i for i in ids]
    means = torch.stack([features[m].mean(dim=0) for m in members])
    means = torch.nn.functional.normalize(means, dim=1)[1:]
    similarity = means @ means.T
    labels = connected_components((similarity.max() - similarity) <= eps)
    merged = flat.clone()
    for member, label in zip(members[1:], labels):
        merged[member] = PAD_REGION + label
    return merged.view_as(regions)


def correct_by_regions(labels: torch.Tensor, label_map: torch.Tensor) -> torch.Tensor:
    """CorrCLIP's map correction: every region of ``label_map`` but the smallest id takes its most frequent class
    (ties: the smallest class id).

    Args:
        labels: int64 [H, W] predicted classes; ``label_map``: int [H, W] region ids at the same size.
    Returns:
        int64 [H, W].
    """
    out = labels.clone()
    label_map = label_map.to(labels.device)
    for region in torch.unique(label_map)[1:]:
        inside = label_map == region
        out[inside] = torch.bincount(labels[inside]).argmax()
    return out
