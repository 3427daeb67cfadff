"""The scores the analyses compare (contract rules 1-3): CLIP's last-block attention and VFM cosine similarities.

Every image is stretched to S x S (rule 1), so every image has the same patches per scorer; all scores are fp32.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..clip_encoder import CLIP_MEAN, CLIP_STD, check_clip_visual, tokens_before_last_block
from ..correlative_attention import last_block_heads
from ..precision import autocast_off
from ..proxy_attention import cosine_similarity_matrix
from ..vfm import standardize, vfm_features, vfm_recipe

#: The attention kinds of rule 2: query-key (CLIP's own), query-query, key-key, value-value.
ATTENTION_PAIRS = ("qk", "qq", "kk", "vv")


def analysis_input(image: torch.Tensor, size: int) -> torch.Tensor:
    """Rule 1: a datamodule image -> the analysis input.

    Args:
        image: [3, h, w] uint8 (or [B, 3, h, w]; floats are taken as 0..255).
        size: S.
    Returns:
        [B, 3, S, S] float32 RGB in [0, 1] (``bilinear``, ``align_corners=False``).
    """
    x = image[None] if image.dim() == 3 else image
    x = x.float() / 255.0
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def clip_visual(clip_model: nn.Module) -> nn.Module:
    """The open_clip vision tower of a CLIP model (or the tower itself)."""
    visual = getattr(clip_model, "visual", clip_model)
    check_clip_visual(visual)
    return visual


def clip_patch_size(clip_model: nn.Module) -> tuple[int, int]:
    """(ph, pw) of CLIP's patch embedding."""
    return tuple(int(k) for k in clip_visual(clip_model).conv1.kernel_size)


@torch.no_grad()
def clip_attention_scores_with_grid(clip_model: nn.Module,
                                    images: torch.Tensor) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
    """:func:`clip_attention_scores` and the CLIP grid (gh, gw)."""
    visual = clip_visual(clip_model)
    with autocast_off(images.device):
        tokens, grid = tokens_before_last_block(visual, standardize(images.float(), CLIP_MEAN, CLIP_STD))
        # each [B, heads, L, head_dim], the class token (index 0) removed
        named = {name: part.float()[:, :, 1:] for name, part in zip("qkv", last_block_heads(visual, tokens))}
        scale = named["q"].shape[-1] ** -0.5
        scores = {ab: ((named[ab[0]] @ named[ab[1]].transpose(-2, -1)) * scale).softmax(dim=-1)
                  for ab in ATTENTION_PAIRS}
    return scores, grid


def clip_attention_scores(clip_model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """CLIP's last-block attention among the patches, per head (rule 2).

    The tokens entering the last block as ProxyCLIP computes them (CLIP mean/std, DINO-rule positional
    interpolation), ``u = ln_1(tokens)``, ``q, k, v = in_proj(u)`` split into heads (``head_dim = width / heads``),
    the class token removed; for ab in {qk, qq, kk, vv}: ``Attn_ab[h] = softmax_j(a_i . b_j * head_dim ** -0.5)``
    over the L patch keys.

    Args:
        clip_model: an open_clip CLIP (or its ViT vision tower).
        images: [B, 3, S, S] RGB in [0, 1] (not normalised).
    Returns:
        ``{"qk", "qq", "kk", "vv": float32 [B, heads, L, L]}``, rows sum to 1, L = (S / patch)^2 row-major.
    """
    return clip_attention_scores_with_grid(clip_model, images)[0]


@torch.no_grad()
def vfm_similarities(vfm: nn.Module, kind: str, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Rule 3: cosine similarities of a VFM's patch features.

    Args:
        vfm, kind: a VFM and its recipe kind (:func:`proxyclip_pl.towers.build_vfm`).
        images: [B, 3, S, S] RGB in [0, 1]; each VFM's own input recipe applies (window size S).
    Returns:
        float32 [B, L, L] in [-1, 1] (diagonal ~ 1) and the VFM grid (h, w), L = h * w row-major.
    """
    features = vfm_features(vfm, kind, images, images.shape[-1])
    grid = (int(features.shape[-2]), int(features.shape[-1]))
    return cosine_similarity_matrix(features.flatten(2).transpose(1, 2)), grid


def vfm_patch_constraint(vfm: nn.Module, kind: str, size: int) -> tuple[int, int] | None:
    """The patch size S must be a multiple of for this VFM, or ``None``: a VFM that is fed at its own size (SAM's
    1024 stretch) or has no ViT patch embedding."""
    patch = getattr(getattr(vfm, "patch_embed", None), "patch_size", None)
    if patch is None:
        return None
    try:
        fed = vfm_recipe(kind).input_size(size)
    except ValueError:  # a kind this module does not know: no constraint it could state
        return None
    if fed not in (None, size):
        return None
    patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
    return tuple(int(p) for p in patch)


def seed_patch(point: tuple[float, float], grid: tuple[int, int]) -> int:
    """Row-major index of the seed patch of (y, x) in [0, 1)^2 on (gh, gw):
    ``(min(floor(y gh), gh - 1), min(floor(x gw), gw - 1))``."""
    gh, gw = grid
    row = min(math.floor(point[0] * gh), gh - 1)
    col = min(math.floor(point[1] * gw), gw - 1)
    return row * gw + col

