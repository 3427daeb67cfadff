"""NACLIP: neighbourhood-aware attention in a reduced last block.

Transcribed from sinahmr/NACLIP ``clip/model.py``, ``VisionTransformer`` with ``arch="reduced"``,
``attn_strategy="naclip"``, ``gaussian_std=5.0`` (the defaults of ``naclip.py``'s ``NACLIP``):

* ``custom_attn``: per head, ``A = softmax(k k^T * scale + Omega)`` with ``scale = head_dim ** -0.5``; the
  additive bias ``Omega`` is *not* scaled. Output ``out_proj(A v)``.
* ``gaussian_window`` + ``get_attention_addition``: a (2gh-1) x (2gw-1) Gaussian window centred on its middle,
  ``exp(-(dy^2 + dx^2) / (2 std^2))`` (the code scales coordinates by ``1 / (std * sqrt(2))`` and
  exponentiates minus the squared norm), is correlated ('same' padding) with the one-hot map of every patch, so
  for patches p = (r, c) and p' = (r', c') on the gh x gw grid

      Omega[p, p'] = exp(-((r - r')^2 + (c - c')^2) / (2 std^2)),

  and a zero row and a zero column are prepended for the class token (it gets no neighbourhood bias, and no
  patch gets a bias towards it). The official code builds the window in fp32 and casts it to the model dtype;
  :func:`gaussian_attention_bias` evaluates the same closed form directly in the requested dtype.
* ``forward`` with ``arch="reduced"``: the last block is ``x = custom_attn(ln_1(x))`` only -- no residual
  connection, no MLP -- then ``ln_post(x) @ proj``; ``naclip.py`` (``forward_feature``) drops the class token.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .correlative_attention import check_tokens, last_block_heads, merge_heads

#: ``gaussian_std`` default of NACLIP (``naclip.py``) and of its published setting.
GAUSSIAN_STD = 5.0


def gaussian_attention_bias(
    grid: tuple[int, int],
    std: float = GAUSSIAN_STD,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """NACLIP's additive attention bias ``Omega`` for a gh x gw grid, class token included.

    Returns:
        [1 + gh*gw, 1 + gh*gw]: row/column 0 (class token) zero; patch block
        ``exp(-||pos_p - pos_p'||^2 / (2 std^2))`` with patches row-major.
    """
    if std <= 0:
        raise ValueError(f"gaussian std must be positive, got {std}")
    grid_h, grid_w = grid
    rows = torch.arange(grid_h, dtype=dtype, device=device).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, dtype=dtype, device=device).repeat(grid_h)
    dist2 = (rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2
    return F.pad(torch.exp(-dist2 / (2 * std * std)), (1, 0, 1, 0))


def neighbourhood_attention(
    visual: nn.Module, tokens: torch.Tensor, grid: tuple[int, int], std: float = GAUSSIAN_STD
) -> torch.Tensor:
    """NACLIP's attention output before ``out_proj``: ``softmax(k k^T * scale + Omega) v`` per head.

    Args:
        tokens: [B, 1 + gh*gw, D] tokens entering the last block.
    Returns:
        [B, 1 + gh*gw, D] heads concatenated.
    """
    check_tokens(tokens, grid)
    _, k, v = last_block_heads(visual, tokens)
    bias = gaussian_attention_bias(grid, std, dtype=k.dtype, device=k.device)
    # SDPA adds a float mask to the scaled logits: softmax(k k^T / sqrt(d_h) + Omega).
    return merge_heads(F.scaled_dot_product_attention(k, k, v, attn_mask=bias))


def naclip_embeddings(
    visual: nn.Module, tokens: torch.Tensor, grid: tuple[int, int], std: float = GAUSSIAN_STD
) -> torch.Tensor:
    """NACLIP dense embeddings: reduced last block (attention only), ``ln_post``, ``proj``, CLS dropped.

    Args:
        visual: open_clip ``VisionTransformer`` (``clip_model.visual``).
        tokens: [B, 1 + gh*gw, D] tokens entering the last block (batch-first, class token first).
        grid: (gh, gw), rows from the image height.
        std: Gaussian window standard deviation in patches.
    Returns:
        [B, gh*gw, d] patch embeddings, not normalised.
    """
    z = visual.transformer.resblocks[-1].attn.out_proj(neighbourhood_attention(visual, tokens, grid, std))
    return visual.ln_post(z[:, 1:]) @ visual.proj
