"""Shared encoder passes: one encoder pass per window serving several segmenters (e.g. VOC21 and VOC20, which
list the same images), each matched against its own text embeddings."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .segmenter import Segmenter, _require, require_one_image


def shares_encoder(a: nn.Module, b: nn.Module) -> bool:
    """Whether one encoder pass over a window serves both segmenters (equal :meth:`Segmenter.encoder_config`)."""
    if not (isinstance(a, Segmenter) and isinstance(b, Segmenter)):
        return False
    return a.encoder_config() == b.encoder_config()


@torch.no_grad()
def shared_slide_logits(segmenters: Sequence[Segmenter], image: torch.Tensor, **inputs: Any) -> list[torch.Tensor]:
    """Sliding-window logits of one image for several segmenters from ONE encoder pass per window.

    Each window is encoded once (:meth:`Segmenter.dense_embeddings` of the first segmenter) and matched
    against every segmenter's own text embeddings; every later step is elementwise or per query, so each
    segmenter's logits are exactly those of its own :meth:`Segmenter.slide_logits`.

    Args:
        segmenters: segmenters that share their encoder (:func:`shares_encoder`; checked).
        image: [1, 3, H, W] RGB in [0, 1], already resized to the test scale.
        inputs: the lead's :meth:`Segmenter.image_inputs` of the image (whole-image methods).
    Returns:
        one [1, Q_i, H, W] float32 tensor per segmenter (raw averaged cosine logits; a whole-image method's grid).
    """
    lead = segmenters[0]
    for other in segmenters[1:]:
        _require(shares_encoder(lead, other), f"{type(other).__name__} does not share the encoder of the first "
                 "segmenter (different towers or encoder settings): evaluate them in separate passes")

    def match(embeddings: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return torch.cat([s.match(embeddings, grid) for s in segmenters], dim=1)

    require_one_image(image)
    sizes = [len(s.queries) for s in segmenters]
    logits = lead.image_logits(image.to(lead.device), match, sum(sizes), **inputs)
    return list(logits.split(sizes, dim=1))
