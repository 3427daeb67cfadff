"""SCLIP: correlative self-attention (CSA) in CLIP's last block, and SCLIP's area-threshold post-processing.

Transcribed from wangf3014/SCLIP:

* ``clip/model.py``, ``VisionTransformer.custom_attn(..., csa=True)``: per head,
  ``A = softmax(q q^T * scale) + softmax(k k^T * scale)`` with ``scale = head_dim ** -0.5``, output
  ``out_proj(A v)`` (heads concatenated). The query, key and value come from the block's fused
  ``in_proj_weight`` / ``in_proj_bias`` applied to ``ln_1(x)``.
* ``clip/model.py``, ``VisionTransformer.forward(return_all=True, csa=True)``: the last block keeps its
  residual connections *and* its MLP, only the attention is replaced::

      x = x + CSA(ln_1(x));  x = x + mlp(ln_2(x));  out = ln_post(x) @ proj

  and ``clip_segmentor.py`` (``forward_feature``) drops the class token. (The residual/FFN removal is
  NACLIP's and ClearCLIP's choice, not SCLIP's.)
* ``clip_segmentor.py``, ``CLIPForSegmentation.postprocess_result``: softmax over queries of the scaled
  logits, max over each class's queries, then, when ``area_thd`` is set, foreground classes whose share of
  the predicted foreground area is not above ``area_thd`` get probability 0, then argmax and ``prob_thd``.

The helpers :func:`last_block_heads` and :func:`merge_heads` are shared with
:mod:`proxyclip_pl.neighbourhood_attention` and :mod:`proxyclip_pl.self_self_attention`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def check_tokens(tokens: torch.Tensor, grid: tuple[int, int]) -> None:
    """Raise ``ValueError`` unless ``tokens`` is [B, 1 + gh*gw, D]."""
    if tokens.dim() != 3 or tokens.shape[1] != 1 + grid[0] * grid[1]:
        raise ValueError(f"expected tokens [B, 1 + {grid[0]}*{grid[1]}, D], got {tuple(tokens.shape)}")


def last_block_heads(visual: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query, key and value of the last block, split into heads.

    Args:
        visual: open_clip ``VisionTransformer`` whose last block has a fused ``nn.MultiheadAttention``.
        tokens: [B, L, D] batch-first tokens entering the last block.
    Returns:
        q, k, v, each [B, H, L, D // H], from ``F.linear(ln_1(tokens), in_proj_weight, in_proj_bias)``.
    """
    block = visual.transformer.resblocks[-1]
    attn = block.attn
    batch, length, width = tokens.shape
    qkv = F.linear(block.ln_1(tokens), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(batch, length, 3, attn.num_heads, width // attn.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


def merge_heads(z: torch.Tensor) -> torch.Tensor:
    """[B, H, L, d_h] -> [B, L, H * d_h] (heads concatenated in order, as ``nn.MultiheadAttention`` does)."""
    batch, heads, length, head_dim = z.shape
    return z.transpose(1, 2).reshape(batch, length, heads * head_dim)


def correlative_attention(visual: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """SCLIP's CSA output before ``out_proj``: ``(softmax(q q^T s) + softmax(k k^T s)) v`` per head.

    Args:
        tokens: [B, L, D] tokens entering the last block (class token included; it takes part as a key).
    Returns:
        [B, L, D] heads concatenated.
    """
    q, k, v = last_block_heads(visual, tokens)
    # SDPA's default scale is head_dim ** -0.5, SCLIP's scale; (A1 + A2) v = A1 v + A2 v.
    z = F.scaled_dot_product_attention(q, q, v) + F.scaled_dot_product_attention(k, k, v)
    return merge_heads(z)


def sclip_embeddings(visual: nn.Module, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """SCLIP dense embeddings: last block with CSA, residuals and MLP kept, ``ln_post``, ``proj``, CLS dropped.

    Args:
        visual: open_clip ``VisionTransformer`` (``clip_model.visual``).
        tokens: [B, 1 + gh*gw, D] tokens entering the last block (batch-first, class token first).
        grid: (gh, gw), rows from the image height.
    Returns:
        [B, gh*gw, d] patch embeddings, not normalised. ``ls_1``/``ls_2`` (layer scale; ``Identity`` in
        OpenAI CLIP, which has none) are applied as in open_clip's block.
    """
    check_tokens(tokens, grid)
    block = visual.transformer.resblocks[-1]
    x = tokens + block.ls_1(block.attn.out_proj(correlative_attention(visual, tokens)))
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return visual.ln_post(x[:, 1:]) @ visual.proj


def area_filter(class_probs: torch.Tensor, area_thd: float) -> torch.Tensor:
    """SCLIP's ``area_thd`` step on one image.

    With ``pred = argmax_c probs`` and ``area_c`` its pixel count per class, every foreground class c >= 1
    with ``area_c <= area_thd * sum_{c' >= 1} area_c'`` has its probability map set to 0 (class 0, the
    background, is never touched). Only meaningful for datasets whose class 0 is a background class.

    Args:
        class_probs: [C, H, W] per-class probabilities (after softmax and the max over synonyms).
    Returns:
        [C, H, W] a filtered copy.
    """
    num_classes = class_probs.shape[0]
    pred = class_probs.argmax(0)
    area = torch.bincount(pred.flatten(), minlength=num_classes)[1:].to(class_probs.dtype)
    keep = (area > area_thd * area.sum()).to(class_probs.dtype)
    out = class_probs.clone()
    out[1:] *= keep.view(-1, 1, 1)
    return out


def sclip_labels(
    logits: torch.Tensor,
    query_to_class: torch.Tensor,
    num_classes: int,
    logit_scale: float,
    prob_thd: float = 0.0,
    area_thd: float | None = None,
) -> torch.Tensor:
    """SCLIP's ``postprocess_result`` for one image: label map from the averaged query logits.

    Args:
        logits: [Q, H, W] raw cosine logits at the output size.
        query_to_class: LongTensor [Q], class index of each query (synonyms share an index).
        num_classes: C.
        logit_scale, prob_thd, area_thd: as in SCLIP's configs (``area_thd=None`` skips the area step).
    Returns:
        LongTensor [H, W]: argmax class, 0 where the (filtered) best class probability is below ``prob_thd``.
    """
    probs = (logits * logit_scale).softmax(0)
    index = query_to_class.to(logits.device).view(-1, 1, 1).expand_as(probs)
    class_probs = probs.new_zeros((num_classes,) + probs.shape[1:]).scatter_reduce(0, index, probs, "amax")
    if area_thd is not None:
        class_probs = area_filter(class_probs, area_thd)
    best, labels = class_probs.max(0)
    return labels.masked_fill(best < prob_thd, 0)
