"""Dense CLIP features from an ``open_clip`` ViT: the blocks before the last, and the last block's value path.

open_clip 3.x blocks are batch-first: tokens are [B, 1 + gh*gw, D] with the class token first and the
patches in row-major order (rows from the image height).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .positional_embedding import interpolate_pos_embed_dino

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def check_clip_visual(visual: nn.Module) -> None:
    """Raise ``ValueError`` unless ``visual`` is an open_clip ViT tower with a standard last block."""
    for attr in ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post", "proj"):
        if not hasattr(visual, attr):
            raise ValueError(f"CLIP visual tower has no '{attr}': ProxyCLIP needs an open_clip ViT (got {type(visual).__name__})")
    if getattr(visual, "attn_pool", None) is not None:
        raise ValueError("CLIP towers with attentional pooling are not supported")
    if not hasattr(visual.transformer.resblocks[-1].attn, "in_proj_weight"):
        raise ValueError("the last CLIP block has no fused in_proj_weight")


def _attention_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An open_clip ``ResidualAttentionBlock`` on batch-first tokens [B, L, D], attention via SDPA.

    Same math as ``block(x)``. ``nn.MultiheadAttention`` leaves its fused path under autocast and then
    projects sequence-first views, which CPU bf16 turns into a copy of the expanded weight per batch
    entry (several seconds per image); contiguous ``F.linear`` + ``scaled_dot_product_attention`` avoid it.
    """
    attn = block.attn
    batch, length, width = x.shape
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(batch, length, 3, attn.num_heads, width // attn.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, length, width)
    x = x + block.ls_1(attn.out_proj(out))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _is_plain_attention_block(block: nn.Module) -> bool:
    attn = getattr(block, "attn", None)
    return (
        isinstance(attn, nn.MultiheadAttention)
        and attn.batch_first
        and attn._qkv_same_embed_dim
        and not hasattr(block, "ln_1_kv")
        and isinstance(getattr(block, "ln_attn", nn.Identity()), nn.Identity)
    )


def _run_blocks(transformer: nn.Module, blocks, x: torch.Tensor) -> torch.Tensor:
    batch_first = getattr(transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for block in blocks:
        x = _attention_block(block, x) if batch_first and _is_plain_attention_block(block) else block(x)
    return x if batch_first else x.transpose(0, 1)


def tokens_before_last_block(
    visual: nn.Module, x: torch.Tensor, pos_embed_rule: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Patch-embed, add the interpolated positional embedding, ``ln_pre``, blocks 0..L-2.

    Args:
        x: [B, 3, h, w] CLIP-normalised windows; h, w are floored to multiples of the patch size.
        pos_embed_rule: ``(table [1 + s*s, D], gh, gw) -> [1 + gh*gw, D]``; default ProxyCLIP's DINO rule
            (:func:`interpolate_pos_embed_dino`).
    Returns:
        tokens [B, 1 + gh*gw, D] entering the last block, and the grid (gh, gw) = (h // p, w // p).
    """
    x = visual.conv1(x.to(visual.conv1.weight.dtype))
    grid = (x.shape[-2], x.shape[-1])
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + (pos_embed_rule or interpolate_pos_embed_dino)(visual.positional_embedding, *grid).to(x.dtype)
    x = visual.ln_pre(visual.patch_dropout(x))
    blocks = visual.transformer.resblocks
    return _run_blocks(visual.transformer, blocks[:-1], x), grid


def last_block_values(visual: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Value projection of ``ln_1(tokens)`` in the last block: [B, T, D] -> [B, T, D]."""
    block = visual.transformer.resblocks[-1]
    width = tokens.shape[-1]
    weight = block.attn.in_proj_weight[2 * width:]
    bias = block.attn.in_proj_bias[2 * width:] if block.attn.in_proj_bias is not None else None
    return F.linear(block.ln_1(tokens), weight, bias)


def project_tokens(visual: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """``out_proj`` -> ``ln_post`` -> ``proj``: [B, N, D] attention output -> [B, N, d] embeddings."""
    z = visual.transformer.resblocks[-1].attn.out_proj(z)
    return visual.ln_post(z) @ visual.proj


def maskclip_embeddings(visual: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """MaskCLIP baseline: value path of the last block on the CLIP grid, CLS dropped: [B, gh*gw, d]."""
    return project_tokens(visual, last_block_values(visual, tokens)[:, 1:])


def vanilla_embeddings(visual: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Vanilla CLIP baseline: the last block run normally, CLS dropped, ``ln_post`` and ``proj``: [B, gh*gw, d]."""
    block = visual.transformer.resblocks[-1]
    x = _run_blocks(visual.transformer, [block], tokens)[:, 1:]
    return visual.ln_post(x) @ visual.proj
