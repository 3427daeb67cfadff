"""Proxy attention: VFM patch-feature similarities re-aggregate CLIP's values.

For one window with VFM features F (N tokens, C channels):
    f = F / ||F||                        (per token)
    S = f f^T                            (N x N cosine similarities, diagonal ~ 1)
    mu = mean of all N^2 entries of S    (one scalar per window, diagonal included)
    A = gamma * (S - beta * mu);  A_ij = -inf where A_ij < 0
    P = row-softmax(A)
The shift only selects the mask (it cancels inside the softmax), so equivalently
``P_ij ∝ exp(gamma * S_ij)`` over the keys with ``S_ij >= beta * mu``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import autocast_off


def cosine_similarity_matrix(features: torch.Tensor) -> torch.Tensor:
    """[B, N, C] tokens -> [B, N, N] cosine similarities, in at least fp32 even under autocast.

    The mask compares every entry with beta * mean, so half-precision rounding here would move keys
    across the threshold; the encoders may run in bf16/fp16, these statistics do not.
    """
    with autocast_off(features.device):
        f = F.normalize(features.to(torch.promote_types(features.dtype, torch.float32)), dim=-1)
        return f @ f.transpose(1, 2)


def proxy_attention_logits(
    similarity: torch.Tensor,
    beta: float,
    gamma: float,
    shift_scale: bool = True,
    mask: bool = True,
    inplace: bool = False,
) -> torch.Tensor:
    """Masked attention logits from cosine similarities.

    Args:
        similarity: [B, N, N] cosine similarities of one window per batch entry.
        shift_scale: shift by ``beta * mu`` (mu per window) and scale by ``gamma`` (the paper's
            'normalisation'); off: logits = S.
        mask: set negative logits to -inf (strict ``<``). A row whose every entry would be masked
            (e.g. a uniform image: S == 1, mu == 1 > 1/beta) keeps its unmasked logits instead, so the
            softmax stays finite; every other row is unchanged.
        inplace: overwrite ``similarity`` (saves two N x N buffers per window; same values).
    Returns:
        [B, N, N] logits with -inf at masked keys.
    """
    logits = similarity if inplace else similarity.clone()
    if shift_scale:
        mu = logits.mean(dim=(1, 2), keepdim=True)
        logits.sub_(beta * mu).mul_(gamma)
    if mask:
        masked = logits < 0
        masked &= ~masked.all(dim=-1, keepdim=True)
        logits.masked_fill_(masked, float("-inf"))
    return logits


def proxy_attention(
    features: torch.Tensor, beta: float = 1.2, gamma: float = 3.0, shift_scale: bool = True, mask: bool = True
) -> torch.Tensor:
    """Row-stochastic proxy attention [B, N, N] (fp32) from VFM tokens [B, N, C] (see module docstring)."""
    logits = proxy_attention_logits(cosine_similarity_matrix(features), beta, gamma, shift_scale, mask, inplace=True)
    return logits.softmax(dim=-1)
