"""Pictures a user reads without a key: --show-dir panels (titles + legend) and the proxyclip-segment overlay legend."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from proxyclip_pl.evaluation import BenchmarkScore
from proxyclip_pl.visualize import IGNORED, add_legend, color_table, colorize, legend_entries, overlay, show_panel

H, W = 40, 50
#: Not a palette colour (the palette's channels are >= 40), so the image tile never looks like a class.
PHOTO = (1, 2, 3)


def colour_counts(picture: np.ndarray) -> dict[tuple[int, int, int], int]:
    """{(r, g, b): number of pixels} of an [H, W, 3] uint8 picture."""
    colours, counts = np.unique(picture.reshape(-1, 3), axis=0, return_counts=True)
    return {tuple(int(v) for v in c): int(n) for c, n in zip(colours, counts)}


def write_panel(tmp_path, pred: np.ndarray, label: np.ndarray, class_names, ignore_index: int = 255,
                mmseg_histc: bool = False) -> np.ndarray:
    """The --show-dir picture BenchmarkScore writes for one image (id ``2007_000033``)."""
    Image.fromarray(np.full((H, W, 3), PHOTO, dtype=np.uint8)).save(tmp_path / "photo.png")
    score = BenchmarkScore(class_names, num_samples=1, show_dir=tmp_path / "show", ignore_index=ignore_index,
                           mmseg_histc=mmseg_histc)
    score.start(is_global_zero=True)
    sample = {"index": 0, "id": "2007_000033", "path": str(tmp_path / "photo.png")}
    score.add(torch.from_numpy(pred), torch.from_numpy(label), sample)
    return np.asarray(Image.open(tmp_path / "show" / "2007_000033.png").convert("RGB"))


def test_show_dir_panel_has_a_title_row_and_a_swatch_per_present_class(tmp_path):
    names = [f"class{i}" for i in range(21)]
    pred = np.zeros((H, W), np.int64)
    pred[:, 25:] = 3
    label = np.full((H, W), 3, np.int64)
    label[:, :10] = 7
    label[:5] = 255  # ignored
    panel = write_panel(tmp_path, pred, label, names)
    # Larger than the bare mosaic image | prediction | ground truth: a title row above, a legend below.
    assert panel.shape[0] > H + 20 and panel.shape[1] >= 3 * W + 8
    counts = colour_counts(panel)
    drawn = colour_counts(np.concatenate([colorize(pred, 21), colorize(label, 21)]))
    for c in (0, 3, 7):  # present in the prediction or the ground truth: more pixels than the two tiles hold
        colour = tuple(int(v) for v in colorize(np.array([c]), 21)[0])
        assert counts.get(colour, 0) > drawn[colour], c
    for c in (1, 2, 20):  # absent: no swatch
        assert tuple(int(v) for v in colorize(np.array([c]), 21)[0]) not in counts, c
    # Title text above the tiles: the photo starts below a row of non-white pixels.
    first_photo_row = int(np.argmax((panel == PHOTO).all(axis=2).any(axis=1)))
    assert first_photo_row > 8 and (panel[:first_photo_row] < 128).any()


def test_show_dir_panel_of_a_large_vocabulary_names_255_and_ignores_65535(tmp_path):
    # ADE-847 preset: 255 is a real class (coloured), 65535 = unlabeled (black, "ignored").
    names = [f"c{i}" for i in range(300)]
    pred = np.full((H, W), 255, np.int64)
    pred[:, :20] = 299
    label = np.full((H, W), 299, np.int64)
    label[:10] = 65535
    panel = write_panel(tmp_path, pred, label, names, ignore_index=255, mmseg_histc=True)
    counts = colour_counts(panel)
    assert counts.get((230, 160, 40), 0) > int((pred == 255).sum())
    colours = color_table(65536, 300, black=())
    entries = legend_entries(np.array([255, 299, 65535]), names, colours, num_classes=300, black=())
    assert entries == [("c255", (230, 160, 40)), ("c299", tuple(int(v) for v in colours[299])), (IGNORED, (0, 0, 0))]


def test_show_panel_titles_widen_narrow_images():
    tiny = np.full((6, 5, 3), PHOTO, np.uint8)
    labels = np.zeros((6, 5), np.int64)
    panel = show_panel(tiny, labels, labels, ["sky"], title="a_long_image_id_0001")
    assert panel.shape[1] > 3 * 5 + 8 and panel.dtype == np.uint8 and panel.shape[2] == 3


def test_overlay_legend_swatch_is_the_overlay_colour_on_mid_grey():
    grey = np.full((H, W, 3), 128, np.uint8)
    labels = np.zeros((H, W), np.uint8)
    labels[:, 20:] = 1
    labels[30:] = 2
    for alpha in (0.5, 0.6):
        shown = overlay(grey, labels, alpha)
        legend = np.asarray(add_legend(shown, labels, ["sky", "horse", "grass"], alpha=alpha))[:, W:]
        legend_colours = colour_counts(legend)
        for c in range(3):
            blended = tuple(int(v) for v in shown[labels == c][0])
            pure = tuple(int(v) for v in colorize(np.array([c]))[0])
            assert blended in legend_colours and pure not in legend_colours, (alpha, c)


def test_segment_command_legend_matches_its_overlay_on_a_grey_photo(tmp_path):
    from proxyclip_pl.commands import segment
    from tiny_models import write_tiny_clip_config, write_tiny_vfm_spec

    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(tmp_path / "grey.png")
    flags = ["--clip", str(write_tiny_clip_config(tmp_path)), "--clip-weights", "random",
             "--vfm", str(write_tiny_vfm_spec(tmp_path)), "--vfm-weights", "random", "--device", "cpu"]
    args = [str(tmp_path / "grey.png"), "--classes", "cat", "dog", "grass", "--out", str(tmp_path / "ov.png"),
            "--labels-out", str(tmp_path / "lab.png")]
    assert segment.main(args + flags) == 0
    out = np.asarray(Image.open(tmp_path / "ov.png").convert("RGB"))
    labels = np.asarray(Image.open(tmp_path / "lab.png"))
    legend_colours = colour_counts(out[:, 64:])
    for c in np.unique(labels):
        assert tuple(int(v) for v in out[:48, :64][labels == c][0]) in legend_colours, c
