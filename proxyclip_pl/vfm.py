"""Patch features (and raw last-layer attention) of a vision foundation model (timm).

Every function takes windows as RGB in [0, 1], [B, 3, h, w], and returns maps on the VFM grid.
Each kind reproduces the official input and positional-embedding handling:

=======  ====================================================  ===============================
kind     input                                                 positional embedding
=======  ====================================================  ===============================
dino     window, ImageNet-normalised                           DINO rule (scale factor, +0.1)
dinov2   window, ImageNet-normalised                           size rule with antialias
mae      window resized to window_size x window_size           size rule, no antialias
sam      window stretched to 1024 x 1024                       native (64 x 64 grid)
=======  ====================================================  ===============================
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .positional_embedding import interpolate_pos_embed_dino, resample_pos_embed_by_size

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAM_INPUT_SIZE = 1024

VFM_KINDS = ("dino", "dinov2", "sam", "mae")


def standardize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(x - mean) / std per channel (the towers' input normalisation); x is [B, 3, h, w] in [0, 1]."""
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def vfm_input(windows: torch.Tensor, kind: str, window_size: int) -> torch.Tensor:
    """ImageNet-normalised VFM input; SAM stretched to 1024^2, MAE resized to window_size^2 (bilinear)."""
    x = standardize(windows, IMAGENET_MEAN, IMAGENET_STD)
    target = {"sam": SAM_INPUT_SIZE, "mae": window_size}.get(kind)
    if target is not None and tuple(x.shape[-2:]) != (target, target):
        x = F.interpolate(x, size=(target, target), mode="bilinear", align_corners=False)
    return x


def check_vfm(model: nn.Module, kind: str) -> None:
    """Raise ``ValueError`` when ``model`` cannot serve as a VFM of the given kind."""
    if kind not in VFM_KINDS:
        raise ValueError(f"unknown vfm_kind {kind!r}; expected one of {', '.join(VFM_KINDS)}")
    if kind == "sam":
        if not hasattr(model, "neck"):
            raise ValueError("vfm_kind='sam' needs a timm samvit model (with a neck)")
        return
    for attr in ("patch_embed", "blocks", "norm", "pos_embed"):
        if getattr(model, attr, None) is None:
            raise ValueError(f"vfm_kind={kind!r} needs a timm VisionTransformer; the model has no '{attr}'")
    if kind in ("dino", "mae") and (model.num_prefix_tokens != 1 or model.no_embed_class):
        raise ValueError(
            f"vfm_kind={kind!r} needs a ViT with one class token whose pos_embed covers it; "
            "use vfm_kind='dinov2' for register models"
        )


def _pos_embed_for(model: nn.Module, kind: str, grid: tuple[int, int]) -> torch.Tensor:
    prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    if kind == "dino":
        return interpolate_pos_embed_dino(model.pos_embed, *grid, num_prefix_tokens=prefix)
    return resample_pos_embed_by_size(model.pos_embed, *grid, num_prefix_tokens=prefix, antialias=kind == "dinov2")


def _vit_tokens(model: nn.Module, kind: str, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """timm ViT forward by hand (so the positional embedding follows ``kind``): [B, T, C] after ``norm``."""
    x = model.patch_embed.proj(x.to(model.patch_embed.proj.weight.dtype))
    grid = (x.shape[-2], x.shape[-1])
    x = model.patch_embed.norm(x.flatten(2).transpose(1, 2))
    pos = _pos_embed_for(model, kind, grid).to(x.dtype)
    prefix = [t.expand(x.shape[0], -1, -1) for t in (model.cls_token, getattr(model, "reg_token", None)) if t is not None]
    if model.no_embed_class:
        x = torch.cat(prefix + [x + pos], dim=1)
    else:
        x = torch.cat(prefix + [x], dim=1) + pos
    x = model.norm_pre(model.patch_drop(model.pos_drop(x)))
    x = model.norm(model.blocks(x))
    return x, grid


def vfm_features(model: nn.Module, kind: str, windows: torch.Tensor, window_size: int) -> torch.Tensor:
    """VFM patch features.

    Args:
        windows: [B, 3, h, w] RGB in [0, 1].
        window_size: the window side (``slide_crop``); MAE inputs are resized to it.
    Returns:
        [B, C, H, W]: final-normed last-layer patch tokens (prefix tokens dropped), rows from the height;
        SAM: the [B, 256, 64, 64] neck map.
    """
    x = vfm_input(windows, kind, window_size)
    if kind == "sam":
        return model.forward_features(x.to(model.patch_embed.proj.weight.dtype))
    tokens, (gh, gw) = _vit_tokens(model, kind, x)
    patches = tokens[:, model.num_prefix_tokens:]
    return patches.transpose(1, 2).reshape(patches.shape[0], -1, gh, gw)


def _capture_last_attention_input(model: nn.Module, run: Callable[[], object]) -> torch.Tensor:
    """Run ``run()`` and return the input of the last block's attention (a temporary, removed hook)."""
    captured: list[torch.Tensor] = []
    handle = model.blocks[-1].attn.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        run()
    finally:
        handle.remove()
    return captured[0]


def vfm_raw_attention(
    model: nn.Module, kind: str, windows: torch.Tensor, window_size: int
) -> tuple[torch.Tensor, tuple[int, int]]:
    """The VFM's own last-layer self-attention among patch tokens, averaged over heads.

    Softmax of ``scale * q k^T`` (plus SAM's relative-position bias) over the patch keys only, i.e. the
    patch-to-patch block of the attention renormalised per row; prefix tokens (CLS, registers) dropped.

    Returns:
        [B, N, N] attention (rows sum to 1) and the VFM grid (H, W), N = H*W in row-major order.
    """
    x = vfm_input(windows, kind, window_size)
    attn = model.blocks[-1].attn
    if kind == "sam":
        from timm.models.vision_transformer_sam import get_decomposed_rel_pos_bias

        inp = _capture_last_attention_input(model, lambda: model.forward_features(x))
        b, h, w, _ = inp.shape
        if (h, w) != tuple(model.patch_embed.grid_size):
            raise ValueError("raw SAM attention needs a global-attention last block")
        n = h * w
        qkv = attn.qkv(inp.reshape(b, n, -1)).view(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, _ = qkv.reshape(3, b * attn.num_heads, n, -1).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        scores = (q * attn.scale) @ k.transpose(-2, -1)
        if attn.use_rel_pos:
            scores = scores + get_decomposed_rel_pos_bias(q, attn.rel_pos_h, attn.rel_pos_w, (h, w), (h, w))
        return scores.float().softmax(-1).view(b, attn.num_heads, n, n).mean(1), (h, w)
    grid: list[tuple[int, int]] = []
    inp = _capture_last_attention_input(model, lambda: grid.append(_vit_tokens(model, kind, x)[1]))
    b, t, _ = inp.shape
    qkv = attn.qkv(inp).reshape(b, t, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, _ = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    p = model.num_prefix_tokens
    scores = (q[:, :, p:] * attn.scale) @ k[:, :, p:].transpose(-2, -1)
    return scores.float().softmax(-1).mean(1), grid[0]
