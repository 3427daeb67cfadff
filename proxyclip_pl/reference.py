"""The plain, deliberately slow reference of ProxyCLIP's per-image inference (never used by the fast path).

This module is a literal, unbatched transcription of the sliding window and of the official
post-processing, written for reading rather than for speed:

* one window at a time, each padded on its own, accumulated into a float32 sum and a count matrix;
* the official post-processing with the full softmax over all queries and the one-hot max over synonyms.

It serves two purposes only:

* parity checks: the tests compare ``ProxyCLIP.slide_logits`` / ``ProxyCLIP.predict`` (batched windows,
  fused chunked post-processing) against it;
* the "naive" baseline that ``scripts/benchmark.py`` times against ``ProxyCLIP.predict``.

The fast path (:mod:`proxyclip_pl.sliding_window`, :mod:`proxyclip_pl.postprocess`) must never import
it: a shared helper would make the comparison compare a function with itself. Only the constants
(the padding multiple, the CLIP mean) are taken from the package. See docs/method_notes.md,
'Sliding window' and 'Post-processing', for the procedure transcribed here.

Functions (all for one image):

* :func:`slide_window_logits`: the window loop, padding and count-matrix average, for any per-window
  logit function;
* :func:`onehot_postprocess`: logits -> label map, the official softmax / one-hot max / argmax / threshold;
* :func:`predict_one_window_at_a_time`: the whole ``predict`` of a :class:`proxyclip_pl.ProxyCLIP`, with
  ``model.window_logits`` called on one window at a time.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from datamodules.io import array_to_rgb_uint8

from .clip_encoder import CLIP_MEAN
from .sliding_window import PAD_MULTIPLE

__all__ = ["onehot_postprocess", "predict_one_window_at_a_time", "slide_window_logits"]


@torch.no_grad()
def slide_window_logits(
    image: torch.Tensor,
    window_logits: Callable[[torch.Tensor], torch.Tensor],
    num_queries: int,
    window_size: int,
    stride: int,
    pad_multiple: int = PAD_MULTIPLE,
    pad_value: tuple[float, float, float] = CLIP_MEAN,
) -> torch.Tensor:
    """Average the logits of overlapping windows, one window at a time (MMSegmentation ``slide``).

    Windows start every ``stride`` pixels; the last row/column is shifted back to end at the border.
    A window whose side is not a multiple of ``pad_multiple`` is padded symmetrically (the extra pixel
    at the bottom/right) with ``pad_value``, i.e. with zeros after CLIP normalisation; its logits are
    cropped back to the window before they are added up.

    Args:
        image: [3, H, W] RGB in [0, 1], already resized to the test scale.
        window_logits: one (padded) window [3, h, w] -> its raw cosine logits [Q, h, w] at the window's
            resolution (e.g. ``lambda w: model.window_logits(w[None])[0]``).
        num_queries: Q.
        window_size, stride: window side (official ``slide_crop``) and step (0 < stride <= window_size).
        pad_multiple: 56 for ProxyCLIP; 1 disables padding.
        pad_value: RGB fill in [0, 1] of the padding.
    Returns:
        [Q, H, W] float32 on ``image``'s device: the mean of the raw logits of the windows covering each
        pixel (values in [-1, 1] for cosine logits).
    """
    _, height, width = image.shape
    rows = max(height - window_size + stride - 1, 0) // stride + 1
    cols = max(width - window_size + stride - 1, 0) // stride + 1
    preds = torch.zeros(num_queries, height, width, dtype=torch.float32, device=image.device)
    count = torch.zeros(height, width, dtype=torch.float32, device=image.device)
    fill = torch.tensor(pad_value, dtype=image.dtype, device=image.device).view(3, 1, 1)
    for i in range(rows):
        for j in range(cols):
            y1, x1 = i * stride, j * stride
            y2, x2 = min(y1 + window_size, height), min(x1 + window_size, width)
            y1, x1 = max(y2 - window_size, 0), max(x2 - window_size, 0)
            window = image[:, y1:y2, x1:x2]
            win_h, win_w = y2 - y1, x2 - x1
            pad_h, pad_w = -win_h % pad_multiple, -win_w % pad_multiple
            top, left = pad_h // 2, pad_w // 2
            if pad_h or pad_w:  # zeros in CLIP-normalised space, split symmetrically
                window = F.pad(window - fill, (left, pad_w - left, top, pad_h - top)) + fill
            logits = window_logits(window)[:, top:top + win_h, left:left + win_w]
            preds[:, y1:y2, x1:x2] += logits.float()
            count[y1:y2, x1:x2] += 1
    if count.min() < 1:
        raise RuntimeError("sliding-window grid leaves pixels uncovered")
    return preds / count


@torch.no_grad()
def onehot_postprocess(
    logits: torch.Tensor,
    query_to_class: torch.Tensor,
    logit_scale: float,
    prob_thd: float,
    num_classes: int | None = None,
) -> torch.Tensor:
    """The official post-processing, literally: softmax over all queries, one-hot max over synonyms,
    argmax over classes, threshold.

    Args:
        logits: [Q, H, W] averaged raw cosine logits (already at the output size).
        query_to_class: LongTensor [Q], class index of each query.
        logit_scale: multiplies the logits before the softmax (40 for ProxyCLIP).
        prob_thd: pixels whose best class probability is below it become class 0.
        num_classes: C; default ``query_to_class.max() + 1``.
    Returns:
        LongTensor [H, W] with values in [0, C), on ``logits``' device.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    probs = torch.softmax(logit_scale * logits.to(dtype), dim=0)  # [Q, H, W], over all queries
    query_to_class = query_to_class.to(probs.device)
    if num_classes is None:
        num_classes = int(query_to_class.max()) + 1
    cls_index = F.one_hot(query_to_class, num_classes).T.to(probs.dtype)  # [C, Q]
    # The official ``(probs[None] * cls_index.view(C, Q, 1, 1)).max(1)``, one class at a time (the same
    # values, without materialising the C x Q x H x W product).
    class_probs = torch.stack([(probs * cls_index[c].view(-1, 1, 1)).max(dim=0).values for c in range(num_classes)])
    labels = class_probs.argmax(dim=0)
    labels[class_probs.max(dim=0).values < prob_thd] = 0
    return labels


@torch.no_grad()
def predict_one_window_at_a_time(model, image_uint8: np.ndarray) -> torch.Tensor:
    """``ProxyCLIP.predict`` the official way, with one window per ``model.window_logits`` call.

    Short-side resize (``model.preprocess``) -> :func:`slide_window_logits` with the model's window side, stride
    and the padding to a multiple of 56 -> bilinear upsampling (align_corners=False) of the averaged
    logits to the original size -> :func:`onehot_postprocess` with the model's ``logit_scale`` and
    ``prob_thd``. ProxyCLIP's protocol only: no PAMR, no area filter.

    Args:
        model: a :class:`proxyclip_pl.ProxyCLIP` (any VFM / attention variant).
        image_uint8: HxWx3 uint8 RGB at the original size (gray, RGBA and 16-bit arrays are converted
            as ``predict`` converts them).
    Returns:
        LongTensor [H, W] of class ids in [0, C), on the model's device.
    """
    rgb = array_to_rgb_uint8(image_uint8)
    height0, width0 = rgb.shape[:2]
    image = model.preprocess(rgb)[0]  # [3, h, w] in [0, 1], short side resized
    logits = slide_window_logits(image, lambda window: model.window_logits(window[None])[0], len(model.queries),
                                 model.slide_crop, model.slide_stride)
    logits = F.interpolate(logits[None], size=(height0, width0), mode="bilinear", align_corners=False)[0]
    return onehot_postprocess(logits, model.query_to_class, model.logit_scale, model.prob_thd, model.num_classes)
