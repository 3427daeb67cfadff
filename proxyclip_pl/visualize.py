"""Colour label maps, overlays, legends and the titled ``--show-dir`` panels.

Everything takes uint8 RGB numpy arrays; :func:`colorize`, :func:`overlay`, :func:`side_by_side` and
:func:`show_panel` return uint8 RGB numpy arrays ([H, W, 3]), :func:`add_legend` a PIL image,
:func:`palette` and :func:`color_table` colour tables. A legend's swatches are taken from the very table
the picture was drawn with, so a swatch and the pixels of its class have the same RGB value.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Legend name of the pixels drawn black because they are not scored (ignore value, unlabeled).
IGNORED = "ignored"
#: The neutral background an overlay legend's swatches are blended over (see :func:`add_legend`).
MID_GREY = 128
PAD = 4  # pixels between tiles, around text and between legend entries (side_by_side's gap)


def palette(num_colors: int = 256, seed: int = 0) -> np.ndarray:
    """[max(num_colors, 256), 3] uint8 random bright colours (fixed seed); index 255 (ignore) is black.

    A longer table starts with the rows of a shorter one, so a class keeps its colour whatever the size.
    """
    rng = np.random.default_rng(seed)
    colors = rng.integers(40, 256, size=(max(num_colors, 256), 3), dtype=np.uint8)
    colors[255] = 0
    return colors


def color_table(top: int, num_classes: int | None = None, black: Sequence[int] = (255,)) -> np.ndarray:
    """[max(top, num_classes, 256), 3] uint8: the colour :func:`colorize` gives each label value in [0, top).

    Values in ``black`` and, when ``num_classes`` is given, every value ``>= num_classes`` are black
    (no class colour is black: the palette's channels are >= 40).
    """
    colors = palette(max(top, num_classes or 0)).copy()
    if 255 not in black:  # 255 is a real class here (ADE-847, PC-459): give it a colour
        colors[255] = (230, 160, 40)
    for v in black:
        if 0 <= v < len(colors):
            colors[v] = 0
    if num_classes is not None:
        colors[num_classes:] = 0
    return colors


def colorize(labels: np.ndarray, num_classes: int | None = None, black: Sequence[int] = (255,)) -> np.ndarray:
    """[H, W] integer labels (any non-negative range, e.g. uint16 with 847 classes) -> [H, W, 3] uint8 colours.

    Values in ``black`` (default 255, the usual ignore value) and, when ``num_classes`` is given, every
    value ``>= num_classes`` (e.g. 65535 = unlabeled) are black.
    """
    labels = np.asarray(labels).astype(np.int64)
    top = int(labels.max()) + 1 if labels.size else 1
    return color_table(top, num_classes, black)[labels]


def blend(image: np.ndarray, colors: np.ndarray, alpha: float) -> np.ndarray:
    """``(1 - alpha) * image + alpha * colors``, rounded: uint8 arrays of one shape ([..., 3]) -> uint8."""
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colors.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend colour labels (:func:`colorize`, ``alpha`` in [0, 1]) over an [H, W, 3] uint8 image."""
    return blend(image, colorize(labels), alpha)


def legend_entries(values: np.ndarray, class_names: Sequence[str], colors: np.ndarray,
                   num_classes: int | None = None, black: Sequence[int] = (255,)) -> list[tuple[str, tuple[int, int, int]]]:
    """[(name, rgb)] of the label ``values`` present, in label order, ``"ignored"`` (once) last.

    ``colors``, ``num_classes`` and ``black`` are those the picture was drawn with (:func:`color_table`): the
    values in ``black`` or ``>= num_classes`` are drawn black and listed as ``"ignored"``. A value without a
    name (>= len(class_names)) is listed as ``label <value>``.
    """
    entries, ignored = [], None
    for v in sorted({int(v) for v in np.unique(values)}):
        rgb = tuple(int(c) for c in colors[v])
        if v in black or (num_classes is not None and v >= num_classes):
            ignored = ignored or rgb  # all drawn alike (black, or black blended in an overlay legend)
        else:
            entries.append((class_names[v] if v < len(class_names) else f"label {v}", rgb))
    if ignored is not None:
        entries.append((IGNORED, ignored))
    return entries


def _font(image_height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font, larger for large images (size 10 for <= 320 px up to 28) when FreeType is there."""
    size = int(min(28, max(10, image_height // 32)))
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_size(font, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text or " ")
    return int(right), int(bottom)


def legend_image(entries: Sequence[tuple[str, tuple[int, int, int]]], font, max_width: int | None = None) -> Image.Image:
    """The entries as swatch + name rows on white; with ``max_width`` they flow into as many columns as fit
    (at least one), else one column. A swatch's inside is exactly its colour; its 1-pixel frame is grey."""
    text_h = _text_size(font, "Ag")[1]
    row = text_h + PAD
    box = max(8, text_h - 2)
    entry_w = box + 2 * PAD + max((_text_size(font, name)[0] for name, _ in entries), default=0) + PAD
    cols = 1 if max_width is None else max(1, min(len(entries), (max_width - PAD) // entry_w))
    rows = -(-len(entries) // cols) if entries else 0
    canvas = Image.new("RGB", (PAD + cols * entry_w, PAD + rows * row), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (name, rgb) in enumerate(entries):
        x, y = PAD + (i // rows) * entry_w, PAD + (i % rows) * row
        draw.rectangle([x, y, x + box, y + box], fill=(128, 128, 128))  # the frame: visible on white and black
        draw.rectangle([x + 1, y + 1, x + box - 1, y + box - 1], fill=rgb)
        draw.text((x + box + PAD, y + (box - text_h) // 2), name, fill=(0, 0, 0), font=font)
    return canvas


def add_legend(panel: np.ndarray, labels: np.ndarray, class_names: Sequence[str], alpha: float | None = None) -> Image.Image:
    """Append a legend (colour swatch + name) of the classes present in ``labels`` to the right of ``panel``.

    The swatches are :func:`colorize`'s colours (ignore value 255 named ``"ignored"``). With ``alpha`` (the
    :func:`overlay`'s) each swatch is its colour blended with that alpha over mid-grey (128): the colour the
    class has in the overlay over a neutral background, which is what a reader compares the picture with
    (a pure swatch looks quite unlike its class in a 50-60 % blend).
    """
    labels = np.asarray(labels).astype(np.int64)
    top = int(labels.max()) + 1 if labels.size else 1
    colors = color_table(top)
    if alpha is not None:
        colors = blend(np.full_like(colors, MID_GREY), colors, alpha)
    entries = legend_entries(labels, class_names, colors)
    legend = legend_image(entries, _font(panel.shape[0]))
    canvas = Image.new("RGB", (panel.shape[1] + legend.width, max(panel.shape[0], legend.height)), (255, 255, 255))
    canvas.paste(Image.fromarray(panel), (0, 0))
    canvas.paste(legend, (panel.shape[1], 0))
    return canvas


def side_by_side(panels: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate equally tall [H, W_i, 3] panels horizontally with a 4-pixel white gap."""
    gap = np.full((panels[0].shape[0], PAD, 3), 255, dtype=np.uint8)
    out = [panels[0]]
    for p in panels[1:]:
        out += [gap, p]
    return np.concatenate(out, axis=1)


def show_panel(image: np.ndarray, pred: np.ndarray, label: np.ndarray, class_names: Sequence[str],
               black: Sequence[int] = (255,), title: str = "") -> np.ndarray:
    """The ``--show-dir`` picture: titled tiles image | prediction | ground truth above a legend.

    Args:
        image: [H, W, 3] uint8 RGB.
        pred, label: [H, W] integer label maps (class ids in [0, C); the label may hold ignore values).
        class_names: the C class names in label order.
        black: values drawn black and listed as ``"ignored"`` (as are values >= C, e.g. 65535 = unlabeled).
        title: the image id, shown in the first tile's title (``"image <id>"``).

    Returns: [H', W', 3] uint8 (H' > H: a title row and the legend of every value in ``pred`` or ``label``).
    """
    num_classes = len(class_names)
    pred, label = np.asarray(pred).astype(np.int64), np.asarray(label).astype(np.int64)
    top = max([int(a.max()) + 1 for a in (pred, label) if a.size] + [1])
    colors = color_table(top, num_classes, black)  # one table for both maps and the legend
    tiles = [np.asarray(image, dtype=np.uint8), colors[pred], colors[label]]
    names = [f"image {title}".strip(), "prediction", "ground truth"]
    font = _font(tiles[0].shape[0])
    text_h = _text_size(font, "Ag")[1]
    # A tile's column is as wide as its title when the image is narrower than the title.
    widths = [max(t.shape[1], _text_size(font, n)[0] + PAD) for t, n in zip(tiles, names)]
    mosaic_w = sum(widths) + PAD * (len(tiles) - 1)
    values = np.concatenate([np.unique(pred), np.unique(label)])
    legend = legend_image(legend_entries(values, class_names, colors, num_classes, black), font, max_width=mosaic_w)
    tile_y = text_h + 2 * PAD
    height = max(t.shape[0] for t in tiles)
    canvas = Image.new("RGB", (max(mosaic_w, legend.width), tile_y + height + PAD + legend.height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for tile, name, w in zip(tiles, names, widths):
        draw.text((x, PAD), name, fill=(0, 0, 0), font=font)
        canvas.paste(Image.fromarray(np.ascontiguousarray(tile)), (x, tile_y))
        x += w + PAD
    canvas.paste(legend, (0, tile_y + height + PAD))
    return np.asarray(canvas)
