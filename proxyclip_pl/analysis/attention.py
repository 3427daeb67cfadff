"""Fig. 2: the seed patch's row of CLIP's attention (head 0 of ``Attn_qk``) and of each VFM's similarities."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from .scores import clip_attention_scores_with_grid, seed_patch, vfm_similarities


@torch.no_grad()
def attention_maps(clip_model: nn.Module | None, vfms: Sequence[tuple[str, nn.Module, str]], images: torch.Tensor,
                   points: Sequence[tuple[float, float]]) -> dict[str, np.ndarray]:
    """The maps of ``attention.npz``.

    Args:
        clip_model: open_clip CLIP (``None``: no ``clip`` entry).
        vfms: ``(scorer name, model, kind)`` per VFM.
        images: [N, 3, S, S] RGB in [0, 1] (the analysis input, rule 1).
        points: P seeds (y, x), fractions of the height and width in [0, 1).
    Returns:
        ``{"clip": float32 [N, P, gh, gw]`` (the seed's row of head 0 of ``Attn_qk``, sums to 1)``,
        "vfm:<name>": float32 [N, P, h, w]`` (cosine similarities of the seed patch with every patch, in [-1, 1])}.
    """
    maps: dict[str, list[np.ndarray]] = {}
    for x in images.split(1):
        if clip_model is not None:
            scores, grid = clip_attention_scores_with_grid(clip_model, x)
            head0 = scores["qk"][0, 0]
            maps.setdefault("clip", []).append(np.stack(
                [head0[seed_patch(p, grid)].reshape(grid).float().cpu().numpy() for p in points]))
        for name, vfm, kind in vfms:
            similarity, grid = vfm_similarities(vfm, kind, x)
            maps.setdefault(name, []).append(np.stack(
                [similarity[0, seed_patch(p, grid)].reshape(grid).float().cpu().numpy() for p in points]))
    return {name: np.stack(values) for name, values in maps.items()}
