"""Overlapping sliding-window inference with a count matrix (MMSegmentation's ``slide`` mode).

Windows start every ``stride`` pixels; the last row/column of windows is shifted back to end at the
border, so overlaps are uneven and the count matrix is what makes the average right. Raw cosine logits
are averaged, before any scaling or softmax.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

Box = tuple[int, int, int, int]  # y1, y2, x1, x2 (end-exclusive)

#: Windows whose side is not a multiple of this are padded (symmetrically) before encoding.
PAD_MULTIPLE = 56


def num_windows_along(length: int, window_size: int, stride: int) -> int:
    """Number of window positions along one axis: ``max(length - window_size + stride - 1, 0) // stride + 1``."""
    return max(length - window_size + stride - 1, 0) // stride + 1


def window_grid(height: int, width: int, window_size: int, stride: int) -> list[Box]:
    """All windows of a ``height x width`` image, row-major; each is ``min(window_size, side)`` long per axis."""
    boxes = []
    for i in range(num_windows_along(height, window_size, stride)):
        for j in range(num_windows_along(width, window_size, stride)):
            y2, x2 = min(i * stride + window_size, height), min(j * stride + window_size, width)
            boxes.append((max(y2 - window_size, 0), y2, max(x2 - window_size, 0), x2))
    return boxes


def window_counts(height: int, width: int, boxes: list[Box]) -> torch.Tensor:
    """[height, width] float32: how many windows cover each pixel (>= 1 everywhere for a full grid)."""
    count = torch.zeros(height, width)
    for y1, y2, x1, x2 in boxes:
        count[y1:y2, x1:x2] += 1
    if count.min() < 1:
        raise RuntimeError("sliding-window grid leaves pixels uncovered")
    return count


def symmetric_padding(height: int, width: int, multiple: int = PAD_MULTIPLE) -> tuple[int, int, int, int]:
    """``F.pad`` amounts (left, right, top, bottom) that bring both sides up to a multiple of ``multiple``."""
    pad_h, pad_w = -height % multiple, -width % multiple
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


def pad_with_colour(windows: torch.Tensor, pad: tuple[int, int, int, int],
                    colour: Sequence[float]) -> torch.Tensor:
    """[B, 3, h, w] padded by ``pad`` (``F.pad`` order) with the RGB ``colour``: the normalisation mean, so that
    the padding is zeros once normalised, as the official code pads normalised windows."""
    if not any(pad):
        return windows
    fill = torch.tensor(colour, device=windows.device, dtype=windows.dtype).view(1, 3, 1, 1)
    return F.pad(windows - fill, pad) + fill


def upsample_and_crop(logits: torch.Tensor, padded: tuple[int, int], pad: tuple[int, int, int, int]) -> torch.Tensor:
    """[B, Q, gh, gw] grid logits -> [B, Q, h, w]: bilinear (align_corners=False) to the padded window ``padded``,
    then the padding ``pad`` (``F.pad`` order) cropped off."""
    left, right, top, bottom = pad
    logits = F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)
    return logits[..., top:padded[0] - bottom, left:padded[1] - right]


def sliding_window_logits(
    image: torch.Tensor,
    grid_logits: Callable[[torch.Tensor], torch.Tensor],
    num_queries: int,
    window_size: int,
    stride: int,
    window_batch_size: int,
    pad_value: tuple[float, float, float],
    pad_multiple: int = PAD_MULTIPLE,
) -> torch.Tensor:
    """Average the window logits of one image.

    Args:
        image: [1, 3, H, W] RGB in [0, 1] (already resized).
        grid_logits: [b, 3, h, w] -> [b, Q, gh, gw] raw cosine logits of b windows on the feature grid;
            each window's logits are upsampled bilinearly (align_corners=False) to (h, w) here, one at a
            time, so the b x Q x h x w tensor is never held.
        window_size, stride: window side (official ``slide_crop``) and step (0 < stride <= window_size).
        window_batch_size: windows per ``grid_logits`` call (bounds memory; results do not depend on it).
        pad_value: RGB fill in [0, 1] for windows padded to a multiple of ``pad_multiple`` (the input mean,
            i.e. zero after normalisation).
        pad_multiple: windows are padded symmetrically up to a multiple of this (56: ProxyCLIP; 16:
            ClearCLIP; 1: no padding, as SCLIP and NACLIP).
    Returns:
        [1, Q, H, W] float32 averaged logits.
    """
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"expected one image [1, 3, H, W], got {tuple(image.shape)}")
    height, width = image.shape[-2:]
    boxes = window_grid(height, width, window_size, stride)
    win_h, win_w = boxes[0][1] - boxes[0][0], boxes[0][3] - boxes[0][2]
    left, right, top, bottom = pad = symmetric_padding(win_h, win_w, pad_multiple)
    padded = (win_h + top + bottom, win_w + left + right)

    def per_window() -> Iterator[tuple[Box, torch.Tensor]]:
        for start in range(0, len(boxes), window_batch_size):
            chunk = boxes[start:start + window_batch_size]
            windows = pad_with_colour(torch.cat([image[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk]), pad,
                                      pad_value)
            for box, logits in zip(chunk, grid_logits(windows)):
                yield box, upsample_and_crop(logits[None], padded, pad)[0]

    return average_over_windows(per_window(), boxes, num_queries, height, width, image.device)


def average_over_windows(window_logits: Iterable[tuple[Box, torch.Tensor]], boxes: list[Box], num_queries: int,
                         height: int, width: int, device: torch.device) -> torch.Tensor:
    """[1, Q, H, W] float32: each window's logits [Q, h, w] summed into its box, divided by the number of windows
    covering each pixel (:func:`window_counts` of ``boxes``). ``window_logits`` is consumed one window at a time."""
    preds = torch.zeros(num_queries, height, width, device=device, dtype=torch.float32)
    for (y1, y2, x1, x2), logits in window_logits:
        preds[:, y1:y2, x1:x2] += logits.float()
    return (preds / window_counts(height, width, boxes).to(preds.device))[None]
