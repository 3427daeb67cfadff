"""Positional-embedding rule of SCLIP, NACLIP and ClearCLIP, and the tokens entering the last block under it.

All three official implementations add the positional embedding with the same method,
``VisionTransformer.interpolate_pos_encoding`` in

* wangf3014/SCLIP ``clip/model.py``,
* sinahmr/NACLIP ``clip/model.py``,
* mc-lan/ClearCLIP ``open_clip/transformer.py``,

called from ``VisionTransformer.forward`` as follows:

* The resampling happens only when the *number of tokens* differs from the stored table
  (``x.shape[1] != positional_embedding.shape[0]``). A grid with ``gh * gw == s * s`` but ``gh != gw``
  (e.g. 7 x 28 for a 14 x 14 table) therefore receives the stored table unchanged, its s x s layout
  read row-major over the gh x gw patches.
* Otherwise the patch part, as ``[1, D, s, s]``, goes through ``F.interpolate`` with
  ``scale_factor = ((gh + 0.1) / s, (gw + 0.1) / s)``, ``mode="bicubic"``, ``align_corners=False``, no
  antialias (NACLIP also passes ``recompute_scale_factor=False``, which is what ``None`` does when a scale
  factor is given). Rows follow the image height. The class-token entry is kept as is.
* The resampling runs in the model's dtype (fp16 on a GPU in all three repositories).

ProxyCLIP's rule (:func:`proxyclip_pl.positional_embedding.interpolate_pos_embed_dino`) uses the same
interpolation but (a) decides by grid shape, so the 7 x 28 case above is resampled, and (b) always resamples
in fp32. :func:`official_pos_embed` follows the token-count test and resamples in the table's dtype when that
is fp32/fp64 (fp16/bf16 tables are resampled in fp32 and cast back: CPU bicubic kernels need not exist for
them, and this only removes rounding).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .clip_encoder import tokens_before_last_block


def official_pos_embed(pos_embed: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Positional embedding for a ``grid_h x grid_w`` patch grid under the SCLIP/NACLIP/ClearCLIP rule.

    Args:
        pos_embed: [1 + s*s, D] (a leading batch dim of 1 is accepted), class entry first, trained on s x s.
        grid_h, grid_w: patch grid (rows from the image height).
    Returns:
        [1 + grid_h*grid_w, D] in the input dtype (with the leading dim when the input had it). The input
        itself when ``grid_h * grid_w == s * s``, whatever the grid's shape.
    """
    squeeze = pos_embed.dim() == 3
    pos = pos_embed[0] if squeeze else pos_embed
    num_patches = pos.shape[0] - 1
    if grid_h * grid_w == num_patches:
        return pos_embed
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"positional embedding with {num_patches} patch entries is not a square grid")
    compute_dtype = pos.dtype if pos.dtype in (torch.float32, torch.float64) else torch.float32
    grid = pos[1:].to(compute_dtype).reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(
        grid, scale_factor=((grid_h + 0.1) / side, (grid_w + 0.1) / side), mode="bicubic", align_corners=False
    )
    if grid.shape[-2:] != (grid_h, grid_w):  # pragma: no cover - guarded by the +0.1 offset
        raise RuntimeError(f"interpolation produced {tuple(grid.shape[-2:])}, expected {(grid_h, grid_w)}")
    patches = grid.permute(0, 2, 3, 1).reshape(grid_h * grid_w, -1).to(pos.dtype)
    out = torch.cat([pos[:1], patches])
    return out[None] if squeeze else out


def official_tokens_before_last_block(visual: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """:func:`proxyclip_pl.clip_encoder.tokens_before_last_block` with :func:`official_pos_embed` instead.

    Patch embedding, class token, positional embedding (official rule), ``ln_pre``, blocks 0..L-2.

    Args:
        visual: open_clip ``VisionTransformer``.
        x: [B, 3, h, w] normalised windows; the grid is (h // p, w // p) (conv floors).
    Returns:
        tokens [B, 1 + gh*gw, D] (batch-first, class token first, patches row-major) and (gh, gw).
    """
    return tokens_before_last_block(visual, x, official_pos_embed)
