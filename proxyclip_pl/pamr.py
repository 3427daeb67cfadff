"""PAMR: pixel-adaptive mask refinement, as used by SCLIP and NACLIP.

Transcribed from ``pamr.py`` of wangf3014/SCLIP and sinahmr/NACLIP (both taken from visinf/1-stage-wseg;
classes ``LocalAffinity``, ``LocalAffinityAbs``, ``LocalAffinityCopy``, ``LocalStDev``, ``PAMR``). Here
"neighbours" of a pixel at dilation d are the 8 pixels at offsets ``(dy, dx) * d`` with ``dy, dx in {-1, 0, 1}``
minus the centre, in row-major kernel order; borders use replicate padding (index clamping). With
``nd = len(dilations)`` there are ``P = 8 * nd`` neighbours, grouped by dilation.

1. The mask is resized to the image with bilinear, ``align_corners=True`` (the identity at equal size).
2. ``sigma``: per image channel, the standard deviation (unbiased, ``torch.std``) of the ``9 * nd`` values
   made of the 3 x 3 dilated window for every dilation (the centre counted once per dilation).
3. Affinity per channel and neighbour: ``-|x_centre - x_neighbour| / (1e-8 + 0.1 * sigma)``; averaged over the
   image channels; softmax over the P neighbours -> weights ``w[P]`` per pixel (they sum to 1; the pixel
   itself is not among them).
4. ``num_iter`` times: ``mask <- sum_P w * mask[neighbour]`` for every mask channel.

Where the methods apply it (SCLIP ``clip_segmentor.py`` ``forward_slide``; NACLIP ``naclip.py``
``predict``): on the averaged raw cosine logits after bilinear resizing to the original image size, before
the logit scale and softmax, with the *normalised* input image bilinearly resized to that size as guide;
``dilations=(8, 16)``. NACLIP stores the affinities in an fp32 buffer; SCLIP keeps the input dtype.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

#: ``pamr_stride`` default of SCLIP and NACLIP.
PAMR_DILATIONS = (8, 16)

#: Kernel-order offsets (dy, dx) of the 8 neighbours; the 3 x 3 window adds the centre (0, 0) between them.
NEIGHBOUR_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
WINDOW_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 0), (0, 1), (1, -1), (1, 0), (1, 1))


def _shifted(x: torch.Tensor, offsets, dilations: Sequence[int]) -> torch.Tensor:
    """[B, K, H, W] -> [B, K, len(offsets) * nd, H, W]: ``x[y + dy*d, x + dx*d]`` with clamped indices."""
    height, width = x.shape[-2:]
    out = []
    for d in dilations:
        padded = F.pad(x, (d, d, d, d), mode="replicate")
        for dy, dx in offsets:
            out.append(padded[..., d + dy * d:d + dy * d + height, d + dx * d:d + dx * d + width])
    return torch.stack(out, dim=2)


def pamr_affinity(image: torch.Tensor, dilations: Sequence[int] = PAMR_DILATIONS) -> torch.Tensor:
    """PAMR's neighbour weights from the guide image.

    Args:
        image: [B, K, H, W] guide image (SCLIP/NACLIP pass the CLIP-normalised RGB image).
    Returns:
        [B, 1, 8 * nd, H, W]: softmax over the neighbour axis, neighbours ordered by dilation, then
        :data:`NEIGHBOUR_OFFSETS`.
    """
    if image.dim() != 4:
        raise ValueError(f"expected image [B, K, H, W], got {tuple(image.shape)}")
    if not dilations or any(int(d) < 1 for d in dilations):
        raise ValueError(f"dilations must be positive integers, got {tuple(dilations)}")
    dilations = [int(d) for d in dilations]
    sigma = _shifted(image, WINDOW_OFFSETS, dilations).std(dim=2, keepdim=True)
    diff = (image.unsqueeze(2) - _shifted(image, NEIGHBOUR_OFFSETS, dilations)).abs()
    logits = (-diff / (1e-8 + 0.1 * sigma)).mean(dim=1, keepdim=True)
    return logits.softmax(dim=2)


def pamr(
    image: torch.Tensor, mask: torch.Tensor, num_iter: int, dilations: Sequence[int] = PAMR_DILATIONS
) -> torch.Tensor:
    """Refine ``mask`` with ``num_iter`` PAMR steps guided by ``image``.

    Args:
        image: [B, K, H, W] guide image.
        mask: [B, C, h, w] logits (or masks); resized to (H, W) first (bilinear, ``align_corners=True``).
        num_iter: PAMR steps (``pamr_steps``; 0 returns the resized mask).
        dilations: neighbour dilations (``pamr_stride``).
    Returns:
        [B, C, H, W] refined mask in the dtype of ``image``.
    """
    if num_iter < 0:
        raise ValueError(f"num_iter must be >= 0, got {num_iter}")
    if mask.dim() != 4 or mask.shape[0] != image.shape[0]:
        raise ValueError(f"expected mask [B, C, h, w] with B = {image.shape[0]}, got {tuple(mask.shape)}")
    # the official callers cast the logits to the image dtype first
    mask = F.interpolate(mask.to(image.dtype), size=image.shape[-2:], mode="bilinear", align_corners=True)
    weights = pamr_affinity(image, dilations)
    dilations = [int(d) for d in dilations]
    height, width = mask.shape[-2:]
    for _ in range(num_iter):
        # sum over the P neighbours, accumulated one at a time (no [B, C, P, H, W] temporary).
        refined = torch.zeros_like(mask)
        index = 0
        for d in dilations:
            padded = F.pad(mask, (d, d, d, d), mode="replicate")
            for dy, dx in NEIGHBOUR_OFFSETS:
                shifted = padded[..., d + dy * d:d + dy * d + height, d + dx * d:d + dx * d + width]
                refined += shifted * weights[:, :, index]
                index += 1
        mask = refined
    return mask
