"""Colour label maps, overlays, a legend and side-by-side panels.

Everything takes uint8 RGB numpy arrays; :func:`colorize`, :func:`overlay` and :func:`side_by_side` return
uint8 RGB numpy arrays ([H, W, 3]), :func:`add_legend` a PIL image, :func:`palette` the colour table.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def palette(num_colors: int = 256, seed: int = 0) -> np.ndarray:
    """[max(num_colors, 256), 3] uint8 random bright colours (fixed seed); index 255 (ignore) is black."""
    rng = np.random.default_rng(seed)
    colors = rng.integers(40, 256, size=(max(num_colors, 256), 3), dtype=np.uint8)
    colors[255] = 0
    return colors


def colorize(labels: np.ndarray, num_classes: int | None = None, black: Sequence[int] = (255,)) -> np.ndarray:
    """[H, W] integer labels (any non-negative range, e.g. uint16 with 847 classes) -> [H, W, 3] uint8 colours.

    Values in ``black`` (default 255, the usual ignore value) and, when ``num_classes`` is given, every
    value ``>= num_classes`` (e.g. 65535 = unlabeled) are black.
    """
    labels = np.asarray(labels).astype(np.int64)
    top = int(labels.max()) + 1 if labels.size else 1
    colors = palette(max(top, num_classes or 0)).copy()
    if 255 not in black:  # 255 is a real class here (ADE-847, PC-459): give it a colour
        colors[255] = (230, 160, 40)
    for v in black:
        if 0 <= v < len(colors):
            colors[v] = 0
    if num_classes is not None:
        colors[num_classes:] = 0
    return colors[labels]


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend colour labels over an [H, W, 3] uint8 image."""
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colorize(labels).astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def add_legend(panel: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> Image.Image:
    """Append a legend (colour swatch + name) of the classes present in ``labels`` to the right of ``panel``."""
    present = [int(c) for c in np.unique(labels) if 0 <= c < len(class_names)]
    font = ImageFont.load_default()
    row = 14
    width = 12 + 8 + max((int(font.getlength(class_names[c])) for c in present), default=0) + 8
    height = max(panel.shape[0], row * len(present) + 8)
    canvas = Image.new("RGB", (panel.shape[1] + width, height), (255, 255, 255))
    canvas.paste(Image.fromarray(panel), (0, 0))
    draw = ImageDraw.Draw(canvas)
    colors = palette(max(present, default=0) + 1)
    x0 = panel.shape[1] + 4
    for i, c in enumerate(present):
        y = 4 + i * row
        draw.rectangle([x0, y, x0 + 10, y + 10], fill=tuple(int(v) for v in colors[c]), outline=(0, 0, 0))
        draw.text((x0 + 16, y - 1), class_names[c], fill=(0, 0, 0), font=font)
    return canvas


def side_by_side(panels: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate equally tall [H, W_i, 3] panels horizontally with a 4-pixel white gap."""
    gap = np.full((panels[0].shape[0], 4, 3), 255, dtype=np.uint8)
    out = [panels[0]]
    for p in panels[1:]:
        out += [gap, p]
    return np.concatenate(out, axis=1)
