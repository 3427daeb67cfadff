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


def cosine_similarity_matrix(features: torch.Tensor) -> torch.Tensor:
    """[B, N, C] tokens -> [B, N, N] cosine similarities (computed in at least fp32)."""
    f = F.normalize(features.to(torch.promote_types(features.dtype, torch.float32)), dim=-1)
    return f @ f.transpose(1, 2)


def proxy_attention_logits(
    similarity: torch.Tensor, beta: float, gamma: float, normalize: bool = True, mask: bool = True
) -> torch.Tensor:
    """Masked attention logits from cosine similarities.

    Args:
        similarity: [B, N, N] cosine similarities of one window per batch entry.
        normalize: shift by ``beta * mu`` (mu per window) and scale by ``gamma``; off: logits = S.
        mask: set negative logits to -inf (strict ``<``). A row whose every entry would be masked
            (e.g. a uniform image: S == 1, mu == 1 > 1/beta) keeps its unmasked logits instead, so the
            softmax stays finite; every other row is unchanged.
    Returns:
        [B, N, N] logits with -inf at masked keys.
    """
    if normalize:
        mu = similarity.mean(dim=(1, 2), keepdim=True)
        logits = gamma * (similarity - beta * mu)
    else:
        logits = similarity
    if not mask:
        return logits
    masked = logits < 0
    masked &= ~masked.all(dim=-1, keepdim=True)
    return logits.masked_fill(masked, float("-inf"))


def proxy_attention(
    features: torch.Tensor, beta: float = 1.2, gamma: float = 3.0, normalize: bool = True, mask: bool = True
) -> torch.Tensor:
    """Row-stochastic proxy attention [B, N, N] from VFM tokens [B, N, C] (see module docstring)."""
    similarity = cosine_similarity_matrix(features)
    return proxy_attention_logits(similarity, beta, gamma, normalize, mask).softmax(dim=-1)
