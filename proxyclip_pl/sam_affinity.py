"""Trident's whole-image affinity from SAM's image encoder: the last (global) attention block's scores, kept where
the heads' value vectors agree (YuHengsss/Trident ``get_sam_sim``), averaged over heads, rows normalised.

Input handling is SAM's own (``SamPredictor.set_image``): the long side to the encoder's input size with PIL's
antialiased bilinear resize, SAM's 0-255 mean/std, zero padding right/bottom to a square. The encoder is a timm
``samvit`` (:func:`proxyclip_pl.towers.build_sam`: LayerNorm eps 1e-6 as SAM's own build).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.models.vision_transformer_sam import get_decomposed_rel_pos_bias
from torch import nn

from .vfm import standardize

#: SAM's input normalisation, 0-255 RGB units (``Sam.pixel_mean`` / ``pixel_std``).
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


def check_sam_encoder(sam: nn.Module) -> None:
    """``ValueError`` unless ``sam`` is a timm samvit whose last block attends globally with relative positions."""
    blocks = getattr(sam, "blocks", None)
    if blocks is None or not hasattr(sam, "patch_embed") or not hasattr(blocks[-1], "attn"):
        raise ValueError("sam must be a timm samvit image encoder (e.g. samvit_base_patch16.sa1b)")
    last = blocks[-1]
    if getattr(last, "window_size", 0) != 0 or not getattr(last.attn, "use_rel_pos", False):
        raise ValueError("sam's last block must use global attention with relative positions (SAM's image encoder)")


def sam_input_size(sam: nn.Module) -> int:
    """The encoder's square input side (1024 for SAM)."""
    size = sam.patch_embed.img_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def sam_input(rgb: np.ndarray, input_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """SAM's input of a uint8 HxWx3 RGB image: [1, 3, S, S] float32 (normalised, zero padded) and the resized
    (height, width) before padding (``ResizeLongestSide``: ``int(side * S / long + 0.5)``)."""
    height, width = rgb.shape[:2]
    scale = input_size * 1.0 / max(height, width)
    target = (int(height * scale + 0.5), int(width * scale + 0.5))
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(target[::-1], Image.BILINEAR))
    x = standardize(torch.from_numpy(resized.copy()).permute(2, 0, 1)[None].float(), SAM_PIXEL_MEAN, SAM_PIXEL_STD)
    return F.pad(x, (0, input_size - target[1], 0, input_size - target[0])), target


def last_attention(sam: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """The last block's attention and values of SAM's encoder on one input.

    Args:
        sam: timm samvit (checked by :func:`check_sam_encoder`).
        x: [1, 3, S, S] SAM input.
    Returns:
        scores [heads, T, T] (softmax over all T = gh*gw tokens, padding included), values [heads, T, head_dim],
        and the token grid (gh, gw).
    """
    x = sam.patch_embed(x.to(next(sam.parameters()).dtype))
    if sam.pos_embed is not None:
        if tuple(sam.pos_embed.shape[1:3]) != tuple(x.shape[1:3]):
            raise ValueError(f"SAM input gives a {tuple(x.shape[1:3])} grid, its pos_embed is "
                             f"{tuple(sam.pos_embed.shape[1:3])}")
        x = x + sam.pos_embed
    x = sam.norm_pre(sam.patch_drop(sam.pos_drop(x)))
    for block in sam.blocks[:-1]:
        x = block(x)
    block = sam.blocks[-1]
    _, gh, gw, width = x.shape
    scores, v = attention_logits(block.attn, block.norm1(x).reshape(1, gh * gw, width), (gh, gw))
    return scores.softmax(dim=-1), v, (gh, gw)


def attention_logits(attn: nn.Module, tokens: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-softmax scores and values of a timm samvit global attention block (``attn``) on its normed input tokens
    [B, N, C] (N = gh * gw of ``grid``): ([B * heads, N, N], [B * heads, N, head_dim])."""
    b, n, _ = tokens.shape
    qkv = attn.qkv(tokens).view(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, b * attn.num_heads, n, -1).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    scores = (q * attn.scale) @ k.transpose(-2, -1)
    if attn.use_rel_pos:
        # the relative-position bias is computed from the unscaled queries, as SAM's add_decomposed_rel_pos
        scores = scores + get_decomposed_rel_pos_bias(q, attn.rel_pos_h, attn.rel_pos_w, grid, grid)
    return scores, v


def correlation_filter(scores: torch.Tensor, values: torch.Tensor, cos_fac: float,
                       refine_neg_cos: bool) -> torch.Tensor:
    """Trident's SAM affinity from valid-token scores and values.

    Args:
        scores: [heads, N, N] attention probabilities restricted to the valid tokens (rows not renormalised).
        values: [heads, N, head_dim].
        cos_fac: threshold factor: a query row keeps keys whose value cosine exceeds ``cos_fac`` x its mean cosine
            (over heads and keys), capped at 0.9.
        refine_neg_cos: when False, a negative threshold becomes 0.6.
    Returns:
        [N, N], rows summing to 1.
    """
    unit = F.normalize(values, dim=-1)
    cosine = unit @ unit.transpose(-2, -1)
    threshold = cos_fac * cosine.mean(dim=0, keepdim=True).mean(dim=-1, keepdim=True)
    if not refine_neg_cos:
        threshold = torch.where(threshold < 0.0, torch.full_like(threshold, 0.6), threshold)
    threshold = torch.clamp(threshold, max=0.9)
    kept = torch.where(cosine > threshold, scores, torch.zeros_like(scores)).mean(dim=0)
    return kept / kept.sum(dim=-1, keepdim=True)


@torch.no_grad()
def sam_part_affinity(sam: nn.Module, rgb: np.ndarray, cos_fac: float,
                      refine_neg_cos: bool) -> tuple[torch.Tensor, tuple[int, int]]:
    """Affinity of one image (or Cityscapes half) from SAM: [N, N] over the valid grid (gh, gw), N = gh*gw, rows
    from the height; ``rgb`` uint8 HxWx3."""
    size = sam_input_size(sam)
    x, (height, width) = sam_input(rgb, size)
    scores, values, (gh, gw) = last_attention(sam, x.to(next(sam.parameters()).device))
    patch = size // gh
    valid = (height // patch, width // patch)
    heads = scores.shape[0]
    scores = scores.view(heads, gh, gw, gh, gw)[:, :valid[0], :valid[1], :valid[0], :valid[1]]
    scores = scores.reshape(heads, valid[0] * valid[1], valid[0] * valid[1])
    values = values.view(heads, gh, gw, -1)[:, :valid[0], :valid[1]].reshape(heads, valid[0] * valid[1], -1)
    return correlation_filter(scores, values, cos_fac, refine_neg_cos), valid
