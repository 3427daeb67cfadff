"""Resize rule, window grid and positional-embedding interpolation against worked examples
(docs/method_notes.md, 'Image preprocessing', 'Sliding window' and 'Positional embeddings')."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from datamodules.resize import rescale_size
from proxyclip_pl.positional_embedding import interpolate_pos_embed_dino, resample_pos_embed_by_size
from proxyclip_pl.sliding_window import symmetric_padding, window_counts, window_grid


@pytest.mark.parametrize(
    "w0,h0,short,resized,window_size,stride,grid",
    [
        (500, 375, 336, (448, 336), 336, 112, (1, 2)),
        (640, 427, 336, (504, 336), 336, 112, (1, 3)),
        (500, 333, 336, (505, 336), 336, 112, (1, 3)),  # upscaled
        (683, 512, 448, (598, 448), 336, 112, (2, 4)),
        (2048, 1024, 448, (896, 448), 224, 112, (3, 7)),  # Cityscapes: 21 windows
    ],
)
def test_resize_and_window_grid_match_spec_table(w0, h0, short, resized, window_size, stride, grid):
    h, w = rescale_size(h0, w0, short)
    assert (w, h) == resized
    boxes = window_grid(h, w, window_size, stride)
    assert len(boxes) == grid[0] * grid[1]
    assert len({b[0] for b in boxes}) == grid[0] and len({b[2] for b in boxes}) == grid[1]
    # every window is full-sized, ends inside the image, and the last ones end at the border
    assert all(y2 - y1 == min(window_size, h) and x2 - x1 == min(window_size, w) for y1, y2, x1, x2 in boxes)
    assert max(b[1] for b in boxes) == h and max(b[3] for b in boxes) == w


def test_resize_rule_rounding_and_long_side_cap():
    # int(x * sf + 0.5), not round-half-even and not floor
    assert rescale_size(333, 500, 336) == (336, 505)  # 500 * 1.009009 = 504.5 -> 505
    assert rescale_size(10, 10000, 336) == (2, 2048)  # long side capped: sf = 2048 / 10000
    assert rescale_size(1, 1, 336) == (336, 336)


def test_count_matrix_is_uneven_where_last_windows_shift_back():
    boxes = window_grid(336, 500, 336, 112)  # x starts 0, 112, then shifted back to 164
    assert [b[2] for b in boxes] == [0, 112, 164]
    count = window_counts(336, 500, boxes)
    assert count[0, 0] == 1 and count[0, 111] == 1 and count[0, 112] == 2 and count[0, 164] == 3
    assert count[0, 336] == 2 and count[0, 448] == 1 and count[0, 499] == 1


def test_small_image_is_one_window_and_padding_is_symmetric():
    assert window_grid(100, 60, 336, 112) == [(0, 100, 0, 60)]
    assert symmetric_padding(100, 60) == (26, 26, 6, 6)  # to 112 x 112
    assert symmetric_padding(336, 224) == (0, 0, 0, 0)
    assert symmetric_padding(1, 1) == (27, 28, 27, 28)


def test_dino_rule_is_scale_factor_bicubic_without_antialias():
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(1 + 14 * 14, 32, generator=g)
    out = interpolate_pos_embed_dino(pos, 21, 28)
    assert out.shape == (1 + 21 * 28, 32)
    assert torch.equal(out[0], pos[0])
    grid = pos[1:].reshape(1, 14, 14, 32).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, scale_factor=(21.1 / 14, 28.1 / 14), mode="bicubic", align_corners=False)
    assert torch.allclose(out[1:], ref.permute(0, 2, 3, 1).reshape(-1, 32), atol=1e-6)
    # row-major with rows from the height: entry (r, c) sits at 1 + r * 28 + c
    assert torch.allclose(out[1 + 3 * 28 + 5], ref[0, :, 3, 5], atol=1e-6)
    # the size-based form (and antialias) differ noticeably on random data (~0.3)
    by_size = resample_pos_embed_by_size(pos, 21, 28)
    by_size_aa = resample_pos_embed_by_size(pos, 21, 28, antialias=True)
    assert (out - by_size).abs().max() > 0.1 and (by_size - by_size_aa).abs().max() > 0.05
    # trained grid -> returned unchanged; a batch dim is kept
    assert interpolate_pos_embed_dino(pos, 14, 14) is pos
    assert interpolate_pos_embed_dino(pos[None], 21, 21).shape == (1, 1 + 441, 32)


def test_dino_rule_in_fp32_for_half_tables():
    pos = torch.randn(1 + 16 * 16, 8).half()
    out = interpolate_pos_embed_dino(pos, 24, 24)
    ref = interpolate_pos_embed_dino(pos.float(), 24, 24).half()
    assert out.dtype == torch.float16 and torch.equal(out, ref)
