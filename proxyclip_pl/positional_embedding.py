"""Positional-embedding resampling rules.

Three rules are in use and they are *not* interchangeable (differences of ~0.3 on random data):

* DINO v1 rule (CLIP and DINO v1): bicubic with ``scale_factor = ((gh + 0.1) / s, (gw + 0.1) / s)``,
  ``align_corners=False``, no antialias. The +0.1 keeps ``floor(s * sf) == g`` while the sampling
  positions follow the scale factor, exactly as DINO's ``interpolate_pos_encoding``.
* size rule without antialias (MAE checkpoints resized once to the window grid).
* size rule with antialias (DINOv2 with registers; timm's ``resample_abs_pos_embed``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _split_grid(pos_embed: torch.Tensor, num_prefix_tokens: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """[P + s*s, D] -> prefix [P, D], fp32 grid [1, D, s, s], side s."""
    prefix, patches = pos_embed[:num_prefix_tokens], pos_embed[num_prefix_tokens:]
    side = math.isqrt(patches.shape[0])
    if side * side != patches.shape[0]:
        raise ValueError(f"positional embedding with {patches.shape[0]} patch entries is not a square grid")
    grid = patches.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    return prefix, grid, side


def _join_grid(prefix: torch.Tensor, grid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    patches = grid.permute(0, 2, 3, 1).flatten(0, 2)
    return torch.cat([prefix.float(), patches]).to(dtype)


def interpolate_pos_embed_dino(
    pos_embed: torch.Tensor, grid_h: int, grid_w: int, num_prefix_tokens: int = 1
) -> torch.Tensor:
    """DINO v1 / CLIP rule.

    Args:
        pos_embed: [P + s*s, D] (a leading batch dim of 1 is accepted), trained on an s x s grid.
        grid_h, grid_w: target grid (rows from the image height, columns from the width).
    Returns:
        [P + grid_h*grid_w, D] in the input dtype, computed in fp32; the input itself when the grid
        already matches.
    """
    squeeze = pos_embed.dim() == 3
    pos = pos_embed[0] if squeeze else pos_embed
    prefix, grid, side = _split_grid(pos, num_prefix_tokens)
    if (grid_h, grid_w) == (side, side):
        return pos_embed
    grid = F.interpolate(
        grid, scale_factor=((grid_h + 0.1) / side, (grid_w + 0.1) / side), mode="bicubic", align_corners=False
    )
    if grid.shape[-2:] != (grid_h, grid_w):  # pragma: no cover - guarded by the +0.1 offset
        raise RuntimeError(f"DINO interpolation produced {tuple(grid.shape[-2:])}, expected {(grid_h, grid_w)}")
    out = _join_grid(prefix, grid, pos.dtype)
    return out[None] if squeeze else out


def resample_pos_embed_by_size(
    pos_embed: torch.Tensor, grid_h: int, grid_w: int, num_prefix_tokens: int = 1, antialias: bool = False
) -> torch.Tensor:
    """Size-based bicubic resampling (MAE: ``antialias=False``; DINOv2-reg: ``antialias=True``).

    Shapes as in :func:`interpolate_pos_embed_dino`.
    """
    squeeze = pos_embed.dim() == 3
    pos = pos_embed[0] if squeeze else pos_embed
    prefix, grid, side = _split_grid(pos, num_prefix_tokens)
    if (grid_h, grid_w) == (side, side):
        return pos_embed
    grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", align_corners=False, antialias=antialias)
    out = _join_grid(prefix, grid, pos.dtype)
    return out[None] if squeeze else out
