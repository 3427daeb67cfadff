"""Patch labels by majority voting on the segmentation map (contract rule 4) and the pairs of one image (rule 5)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def patch_labels(label: Any, grid: tuple[int, int], ignore_index: int = 255) -> torch.LongTensor:
    """The label of every cell of a (gh, gw) patch grid by majority vote over the label map's pixels.

    Pixel (y, x) of the [H0, W0] map belongs to cell ``(floor(y * gh / H0), floor(x * gw / W0))``. A cell's label is
    its most frequent pixel value, ``ignore_index`` included; ties go to the smaller value (so a class beats 255 on a
    tie). Cells labelled ``ignore_index``, and cells without any pixel (a grid finer than the map), are dropped.

    Args:
        label: [H0, W0] integer tensor or array (values any integers, e.g. classes in [0, C) and 255).
        grid: (gh, gw), both >= 1.
        ignore_index: the value of unlabelled pixels, and of dropped cells in the result.
    Returns:
        LongTensor [gh * gw], row-major (cell (r, c) at r * gw + c), on the label's device (CPU for an array):
        each cell's label, ``ignore_index`` for dropped cells.
    """
    lab = label if isinstance(label, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(label))
    if lab.dim() != 2:
        raise ValueError(f"patch_labels: label must be [H0, W0], got shape {tuple(lab.shape)}")
    gh, gw = (int(g) for g in grid)
    if gh < 1 or gw < 1:
        raise ValueError(f"patch_labels: grid must be positive, got {grid}")
    lab = lab.long()
    h0, w0 = lab.shape
    out = torch.full((gh * gw,), int(ignore_index), dtype=torch.long, device=lab.device)
    if lab.numel() == 0:
        return out
    rows = torch.arange(h0, device=lab.device) * gh // h0
    cols = torch.arange(w0, device=lab.device) * gw // w0
    cell = (rows[:, None] * gw + cols[None, :]).reshape(-1)
    values = lab.reshape(-1)
    low = int(values.min())
    span = int(values.max()) - low + 1
    keys, counts = torch.unique(cell * span + (values - low), return_counts=True)  # sorted: cell, then value
    cells, vals = keys // span, keys % span + low
    # most frequent first, ties by the smaller value (stable sorts keep the ascending value order), then by cell
    order = torch.argsort(-counts, stable=True)
    order = order[torch.argsort(cells[order], stable=True)]
    cells, vals = cells[order], vals[order]
    first = torch.ones_like(cells, dtype=torch.bool)
    first[1:] = cells[1:] != cells[:-1]
    out[cells[first]] = vals[first]
    return out


def kept_pair_targets(labels: torch.Tensor, ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs of one image (rule 5): the kept patches and the pair targets.

    Args:
        labels: LongTensor [L] from :func:`patch_labels`.
    Returns:
        ``kept`` LongTensor [K] (indices of the patches not labelled ``ignore_index``) and ``targets`` bool [K, K]
        (``l_i == l_j``); the pairs are its off-diagonal entries.
    """
    kept = torch.nonzero(labels != ignore_index).flatten()
    lk = labels[kept]
    return kept, lk[:, None] == lk[None, :]
