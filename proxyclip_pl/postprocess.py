"""From averaged query logits to a class label map.

The official order is: bilinear upsampling of the logits to the original size, ``prob = softmax(s * L)``
over all Q queries, ``prob_c = max`` over the queries of class c, ``argmax_c``, then ``pred = 0`` where
``max_c prob_c < prob_thd``. Because the max of per-class maxima is the max over queries, and softmax is
monotonic, this equals taking the class of the best query, with
``max prob = 1 / sum_q exp(s*L_q - s*L_max)`` (the softmax's own formula at its maximum, where the
numerator is exactly 1).

So neither the Q x C x H x W one-hot product nor the Q x H x W upsampled logits are needed at once: the
queries are upsampled a few at a time (bilinear upsampling is per channel, so each chunk is bit-identical
to the same channels of a full upsampling), keeping a running best query, and, only when a threshold is
set, a second pass accumulates the softmax denominator.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def logits_to_labels(
    logits: torch.Tensor,
    query_to_class: torch.Tensor,
    logit_scale: float = 40.0,
    prob_thd: float = 0.0,
    size: tuple[int, int] | None = None,
    chunk_elements: int = 1 << 22,
) -> torch.Tensor:
    """Label map from query logits.

    Args:
        logits: [Q, h, w] averaged raw cosine logits.
        query_to_class: LongTensor [Q], non-decreasing class index of each query.
        prob_thd: pixels whose best class probability is below it become class 0.
        size: (H, W) to upsample to (bilinear, align_corners=False) first; ``None`` keeps (h, w).
        chunk_elements: queries are processed in chunks of about this many output logits, bounding
            the temporaries (a Cityscapes image has 19 x 2048 x 1024); results do not depend on it.
    Returns:
        LongTensor [H, W] with values in [0, C).
    """
    num_queries = logits.shape[0]
    height, width = size if size is not None else logits.shape[-2:]
    step = max(1, chunk_elements // (height * width))

    def scaled(start: int) -> torch.Tensor:
        block = logits[start:start + step]
        if size is not None and tuple(block.shape[-2:]) != (height, width):
            block = F.interpolate(block[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        return block.float() * logit_scale

    best_logit = torch.full((height, width), float("-inf"), device=logits.device)
    best_query = torch.zeros(height, width, dtype=torch.long, device=logits.device)
    for start in range(0, num_queries, step):
        value, index = scaled(start).max(dim=0)
        better = value > best_logit  # strict: on ties the first query wins, as argmax does
        best_logit = torch.where(better, value, best_logit)
        best_query = torch.where(better, index + start, best_query)
    labels = query_to_class.to(logits.device)[best_query]
    if prob_thd > 0:
        denominator = torch.zeros(height, width, device=logits.device)
        for start in range(0, num_queries, step):
            denominator += torch.exp(scaled(start).sub_(best_logit)).sum(dim=0)
        labels.masked_fill_(1.0 / denominator < prob_thd, 0)
    return labels
