"""From averaged query logits to a class label map.

The official order is: ``prob = softmax(logit_scale * L)`` over all Q queries, ``prob_c = max`` over the
queries of class c, ``argmax_c``, then ``pred = 0`` where ``max_c prob_c < prob_thd``. Because the max of
per-class maxima is the max over queries, and softmax is monotonic, this equals taking the class of the
best query, with ``max prob = 1 / sum_q exp(s*L_q - s*L_max)`` (the softmax's own formula at its
maximum, where the numerator is exactly 1). No Q x C x H x W one-hot product is materialised.
"""
from __future__ import annotations

import torch


def logits_to_labels(
    logits: torch.Tensor,
    query_to_class: torch.Tensor,
    logit_scale: float = 40.0,
    prob_thd: float = 0.0,
    chunk_elements: int = 1 << 22,
) -> torch.Tensor:
    """Label map from query logits.

    Args:
        logits: [Q, H, W] averaged raw cosine logits.
        query_to_class: LongTensor [Q], non-decreasing class index of each query.
        prob_thd: pixels whose best class probability is below it become class 0.
        chunk_elements: rows are processed in blocks of about this many logits, so the temporaries
            stay small (a Cityscapes image has 19 x 2048 x 1024 logits); results do not depend on it.
    Returns:
        LongTensor [H, W] with values in [0, C).
    """
    num_queries, height, width = logits.shape
    query_to_class = query_to_class.to(logits.device)
    labels = torch.empty(height, width, dtype=torch.long, device=logits.device)
    rows = max(1, chunk_elements // max(1, num_queries * width))
    for top in range(0, height, rows):
        scaled = logits[:, top:top + rows].float() * logit_scale
        best_logit, best_query = scaled.max(dim=0)
        block = query_to_class[best_query]
        if prob_thd > 0:
            max_prob = 1.0 / torch.exp(scaled.sub_(best_logit)).sum(dim=0)
            block.masked_fill_(max_prob < prob_thd, 0)
        labels[top:top + rows] = block
    return labels
