"""ClearCLIP: query-query self-attention in the last block, residual connection and FFN removed.

Transcribed from mc-lan/ClearCLIP (its modified open_clip), with the segmentor's settings
``model_type="ClearCLIP"`` and ``ignore_residual=True`` (``clearclip_segmentor.py``):

* ``open_clip/transformer.py``, ``VisionTransformer.custom_attn(model_type="ClearCLIP")``: per head,
  ``A = softmax(q q^T * scale)`` with ``scale = head_dim ** -0.5``; output ``out_proj(A v)``.
* ``open_clip/transformer.py``, ``VisionTransformer.forward(ignore_residual=True, last_n_layers=1)``: the
  output is ``custom_attn(ln_1(x))`` alone -- no residual, no MLP -- then ``ln_post``, the class token is split
  off by ``_global_pool`` (``pool_type="tok"``) and the patch tokens go through ``proj``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .correlative_attention import check_tokens, last_block_heads, merge_heads


def self_self_attention(visual: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """ClearCLIP's attention output before ``out_proj``: ``softmax(q q^T * scale) v`` per head.

    Args:
        tokens: [B, L, D] tokens entering the last block (class token included as a key).
    Returns:
        [B, L, D] heads concatenated.
    """
    q, _, v = last_block_heads(visual, tokens)
    return merge_heads(F.scaled_dot_product_attention(q, q, v))


def clearclip_embeddings(visual: nn.Module, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """ClearCLIP dense embeddings: q-q attention only in the last block, ``ln_post``, ``proj``, CLS dropped.

    Arguments and result as :func:`~proxyclip_pl.correlative_attention.sclip_embeddings` (``visual``, the tokens
    [B, 1 + gh*gw, D] entering the last block, ``grid``) -> [B, gh*gw, d] patch embeddings, not normalised.
    """
    check_tokens(tokens, grid)
    z = visual.transformer.resblocks[-1].attn.out_proj(self_self_attention(visual, tokens))
    return visual.ln_post(z[:, 1:]) @ visual.proj
