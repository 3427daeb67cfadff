"""Data preparation: conversion tables (every spec row), RLE, converters on raw layouts, downloads, the CLI."""

import hashlib
import http.server
import inspect
import json
import subprocess
import sys
import tarfile
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from datamodules import DatasetCountWarning, DatasetLayoutError, apply_label_transform, build_datamodule, read_label
from datamodules import downloads
from datamodules import label_tables as tables
from datamodules import prepare as prep
from datamodules.rle import decode_rle, rle_string_to_counts
from datamodules.synthetic import random_image, save_image, save_label, voc_palette  # noqa: F401
from proxyclip_pl.cli import run_cli
from proxyclip_pl.commands import prepare as prepare_data
from paths import ROOT

REPO = ROOT


def _run_prepare_cli(argv, capsys) -> tuple[int, str]:
    """Run the CLI in-process through ``run_cli``: (exit status, stderr)."""
    with pytest.raises(SystemExit) as info:
        run_cli(prepare_data.main, argv)
    return info.value.code, capsys.readouterr().err


# COCO RLE encoders: the package only decodes (datamodules.rle); these build the test fixtures.
def counts_to_rle_string(counts) -> str:
    """Inverse of :func:`datamodules.rle.rle_string_to_counts` (6-bit chars, delta-coded from count i-2)."""
    out = []
    for i, cnt in enumerate(counts):
        x = int(cnt) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def counts_from_mask(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts of a bool mask (column-major, starting with a run of 0s)."""
    flat = np.asarray(mask, dtype=bool).T.ravel()
    counts, cur, run = [], False, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    return counts

# Copied row by row from the PASCAL Context table (raw, Context60, Context59); see docs/dataset_notes.md,
# 'PASCAL Context'.
CONTEXT_TABLE = (
    (0, 0, 255), (2, 1, 0), (9, 2, 1), (18, 3, 2), (19, 4, 3), (22, 5, 4),
    (23, 6, 5), (25, 7, 6), (31, 8, 7), (33, 9, 8), (34, 10, 9), (44, 11, 10),
    (45, 12, 11), (46, 13, 12), (59, 14, 13), (65, 15, 14), (68, 16, 15), (72, 17, 16),
    (80, 18, 17), (85, 19, 18), (98, 20, 19), (104, 21, 20), (105, 22, 21), (113, 23, 22),
    (115, 24, 23), (144, 25, 24), (158, 26, 25), (159, 27, 26), (162, 28, 27), (187, 29, 28),
    (189, 30, 29), (207, 31, 30), (220, 32, 31), (232, 33, 32), (258, 34, 33), (259, 35, 34),
    (260, 36, 35), (284, 37, 36), (295, 38, 37), (296, 39, 38), (308, 40, 39), (324, 41, 40),
    (326, 42, 41), (347, 43, 42), (349, 44, 43), (354, 45, 44), (355, 46, 45), (360, 47, 46),
    (366, 48, 47), (368, 49, 48), (397, 50, 49), (415, 51, 50), (416, 52, 51), (420, 53, 52),
    (424, 54, 53), (427, 55, 54), (440, 56, 55), (445, 57, 56), (454, 58, 57), (458, 59, 58),
)

# COCO-Stuff table (raw value, _labelTrainIds, _instanceTrainIds); 255 = unlabeled. See docs/dataset_notes.md,
# 'COCO-Stuff'.
COCO_TABLE = (
    (0, 0, 1), (1, 1, 2), (2, 2, 3), (3, 3, 4), (4, 4, 5), (5, 5, 6),
    (6, 6, 7), (7, 7, 8), (8, 8, 9), (9, 9, 10), (10, 10, 11), (12, 11, 12),
    (13, 12, 13), (14, 13, 14), (15, 14, 15), (16, 15, 16), (17, 16, 17), (18, 17, 18),
    (19, 18, 19), (20, 19, 20), (21, 20, 21), (22, 21, 22), (23, 22, 23), (24, 23, 24),
    (26, 24, 25), (27, 25, 26), (30, 26, 27), (31, 27, 28), (32, 28, 29), (33, 29, 30),
    (34, 30, 31), (35, 31, 32), (36, 32, 33), (37, 33, 34), (38, 34, 35), (39, 35, 36),
    (40, 36, 37), (41, 37, 38), (42, 38, 39), (43, 39, 40), (45, 40, 41), (46, 41, 42),
    (47, 42, 43), (48, 43, 44), (49, 44, 45), (50, 45, 46), (51, 46, 47), (52, 47, 48),
    (53, 48, 49), (54, 49, 50), (55, 50, 51), (56, 51, 52), (57, 52, 53), (58, 53, 54),
    (59, 54, 55), (60, 55, 56), (61, 56, 57), (62, 57, 58), (63, 58, 59), (64, 59, 60),
    (66, 60, 61), (69, 61, 62), (71, 62, 63), (72, 63, 64), (73, 64, 65), (74, 65, 66),
    (75, 66, 67), (76, 67, 68), (77, 68, 69), (78, 69, 70), (79, 70, 71), (80, 71, 72),
    (81, 72, 73), (83, 73, 74), (84, 74, 75), (85, 75, 76), (86, 76, 77), (87, 77, 78),
    (88, 78, 79), (89, 79, 80), (91, 80, 0), (92, 81, 0), (93, 82, 0), (94, 83, 0),
    (95, 84, 0), (96, 85, 0), (97, 86, 0), (98, 87, 0), (99, 88, 0), (100, 89, 0),
    (101, 90, 0), (102, 91, 0), (103, 92, 0), (104, 93, 0), (105, 94, 0), (106, 95, 0),
    (107, 96, 0), (108, 97, 0), (109, 98, 0), (110, 99, 0), (111, 100, 0), (112, 101, 0),
    (113, 102, 0), (114, 103, 0), (115, 104, 0), (116, 105, 0), (117, 106, 0), (118, 107, 0),
    (119, 108, 0), (120, 109, 0), (121, 110, 0), (122, 111, 0), (123, 112, 0), (124, 113, 0),
    (125, 114, 0), (126, 115, 0), (127, 116, 0), (128, 117, 0), (129, 118, 0), (130, 119, 0),
    (131, 120, 0), (132, 121, 0), (133, 122, 0), (134, 123, 0), (135, 124, 0), (136, 125, 0),
    (137, 126, 0), (138, 127, 0), (139, 128, 0), (140, 129, 0), (141, 130, 0), (142, 131, 0),
    (143, 132, 0), (144, 133, 0), (145, 134, 0), (146, 135, 0), (147, 136, 0), (148, 137, 0),
    (149, 138, 0), (150, 139, 0), (151, 140, 0), (152, 141, 0), (153, 142, 0), (154, 143, 0),
    (155, 144, 0), (156, 145, 0), (157, 146, 0), (158, 147, 0), (159, 148, 0), (160, 149, 0),
    (161, 150, 0), (162, 151, 0), (163, 152, 0), (164, 153, 0), (165, 154, 0), (166, 155, 0),
    (167, 156, 0), (168, 157, 0), (169, 158, 0), (170, 159, 0), (171, 160, 0), (172, 161, 0),
    (173, 162, 0), (174, 163, 0), (175, 164, 0), (176, 165, 0), (177, 166, 0), (178, 167, 0),
    (179, 168, 0), (180, 169, 0), (181, 170, 0), (255, 255, 0),
)

# Cityscapes table (labelId, trainId); license plate (-1) is never a pixel value. See docs/dataset_notes.md,
# 'Cityscapes'.
CITYSCAPES_TABLE = (
    (0, 255), (1, 255), (2, 255), (3, 255), (4, 255), (5, 255), (6, 255), (7, 0),
    (8, 1), (9, 255), (10, 255), (11, 2), (12, 3), (13, 4), (14, 255), (15, 255),
    (16, 255), (17, 5), (18, 255), (19, 6), (20, 7), (21, 8), (22, 9), (23, 10),
    (24, 11), (25, 12), (26, 13), (27, 14), (28, 15), (29, 255), (30, 255), (31, 16),
    (32, 17), (33, 18),
)


# ---------------------------------------------------------------- tables
def test_coco_table_every_row():
    raw = np.array([[r for r, _, _ in COCO_TABLE]], np.uint8)
    stuff, obj = tables.convert_coco_stuffthingmap(raw)
    np.testing.assert_array_equal(stuff[0], [s for _, s, _ in COCO_TABLE])
    np.testing.assert_array_equal(obj[0], [o for _, _, o in COCO_TABLE])
    assert len(COCO_TABLE) == 172  # 171 used values + unlabeled


def test_coco_spec_test_vector():
    stuff, obj = tables.convert_coco_stuffthingmap(np.array([[0, 12, 91, 181, 255]], np.uint8))
    assert stuff.tolist() == [[0, 11, 80, 170, 255]] and obj.tolist() == [[1, 12, 0, 0, 0]]


def test_coco_never_occurring_values_fail_loudly():
    # Raw values that never occur in the official maps must fail, not map to 255 (docs/dataset_notes.md, 'COCO-Stuff').
    unused = [11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90]
    assert set(unused) | {r for r, _, _ in COCO_TABLE} == set(range(182)) | {255}
    raw = np.array([unused + [200, 0]], np.uint8)
    with pytest.raises(tables.UnexpectedRawValueError, match=r"bad.png: raw values \[11, 25.*90, 200\]") as info:
        tables.convert_coco_stuffthingmap(raw, source="bad.png")
    assert isinstance(info.value, ValueError)  # the prepare CLI reports it in one line
    for value in unused + [182, 254]:
        with pytest.raises(tables.UnexpectedRawValueError, match=rf"\[{value}\]"):
            tables.convert_coco_stuffthingmap(np.array([[0, value]], np.uint8), source="x.png")


def test_prepare_coco_stops_at_a_map_with_unknown_values(tmp_path, capsys):
    src, raws = _coco_src(tmp_path)
    bad = sorted(raws)[1]
    raw = raws[bad].copy()
    raw[0, 0] = 90  # hair brush: no masks in COCO-Stuff-164k
    save_label(raw, src / "annotations/val2017" / f"{bad}.png")
    with pytest.raises(tables.UnexpectedRawValueError, match=rf"{bad}\.png: raw values \[90\]"):
        prep.prepare_coco(src, src, progress=False)
    assert not (src / f"annotations/val2017/{bad}_labelTrainIds.png").exists()  # nothing written for it
    code, err = _run_prepare_cli(["coco_stuff", "--src", str(src), "--dst", str(src), "--no-progress"], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert f"{bad}.png: raw values [90]" in err


def test_context_table_every_row():
    raw = np.array([[r for r, _, _ in CONTEXT_TABLE]], np.int64)
    c60 = tables.convert_context_raw(raw)
    np.testing.assert_array_equal(c60[0], [c for _, c, _ in CONTEXT_TABLE])
    np.testing.assert_array_equal(apply_label_transform(c60, True)[0], [c for _, _, c in CONTEXT_TABLE])


def test_context_unknown_category_becomes_background_with_warning():
    with pytest.warns(tables.ConversionWarning, match=r"\[3, 459\]"):
        out = tables.convert_context_raw(np.array([[3, 2, 459]]), source="2008_000001")
    assert out.tolist() == [[0, 1, 0]]


def test_cityscapes_table_every_row():
    ids = np.array([[i for i, _ in CITYSCAPES_TABLE]], np.uint8)
    np.testing.assert_array_equal(tables.convert_cityscapes_label_ids(ids)[0], [t for _, t in CITYSCAPES_TABLE])
    assert len(CITYSCAPES_TABLE) == 34
    assert tables.convert_cityscapes_label_ids(np.array([[34, 200, 255]], np.uint8)).tolist() == [[255, 255, 255]]


def test_converters_do_not_chain():
    # Each output depends only on the original pixel: raw 1 -> 0 must not then become something else.
    raw = np.array([[1, 0, 2]], np.uint8)
    stuff, obj = tables.convert_coco_stuffthingmap(raw)
    assert stuff.tolist() == [[1, 0, 2]] and obj.tolist() == [[2, 1, 3]]


# ---------------------------------------------------------------- RLE
def test_rle_roundtrip_and_known_string():
    rng = np.random.default_rng(0)
    for h, w in ((1, 1), (7, 5), (13, 17)):
        m = rng.random((h, w)) > 0.6
        counts = counts_from_mask(m)
        s = counts_to_rle_string(counts)
        assert rle_string_to_counts(s) == counts
        np.testing.assert_array_equal(decode_rle({"size": [h, w], "counts": s}), m)
        np.testing.assert_array_equal(decode_rle({"size": [h, w], "counts": counts}), m)
    # Column-major: a 2x3 mask with only pixel (1, 0) set has counts [1, 1, 4].
    m = decode_rle({"size": [2, 3], "counts": [1, 1, 4]})
    assert m.tolist() == [[False, False, False], [True, False, False]]
    with pytest.raises(ValueError):
        decode_rle({"size": [2, 3], "counts": [1, 1]})


# ---------------------------------------------------------------- converters on raw layouts
def _context_src(tmp_path):
    """VOC2010-like folder + a Detail-format JSON with overlapping annotations."""
    src = tmp_path / "src"
    jpeg = src / "VOCdevkit/VOC2010/JPEGImages"
    rng = np.random.default_rng(1)
    images, anns = [], []
    specs = [("2008_000002", "val", (6, 8)), ("2008_000001", "val", (5, 4)), ("2008_000003", "train", (4, 4))]
    for k, (sid, phase, (h, w)) in enumerate(specs):
        save_image(random_image(h, w, rng), jpeg / f"{sid}.jpg")
        images.append({"image_id": 100 + k, "file_name": f"{sid}.jpg", "height": h, "width": w, "phase": phase})
    a = np.zeros((6, 8), bool); a[:, :4] = True          # aeroplane (2) on the left half
    b = np.zeros((6, 8), bool); b[2:4, 2:6] = True       # person (284) painted later, overlapping
    anns.append({"id": 1, "image_id": 100, "category_id": 2,
                 "segmentation": {"size": [6, 8], "counts": counts_to_rle_string(counts_from_mask(a))}})
    anns.append({"id": 2, "image_id": 100, "category_id": 284,
                 "segmentation": {"size": [6, 8], "counts": counts_from_mask(b)}})
    c = np.ones((5, 4), bool)
    anns.append({"id": 3, "image_id": 101, "category_id": 458,
                 "segmentation": {"size": [5, 4], "counts": counts_from_mask(c)}})
    (src / "trainval_merged.json").write_text(json.dumps({"images": images, "annos_segmentation": anns}))
    return src


def test_prepare_context_from_detail_json(tmp_path):
    src = _context_src(tmp_path)
    dst = tmp_path / "data/VOCdevkit/VOC2010"
    with pytest.warns(DatasetCountWarning):
        stats = prep.prepare_context(src, dst, progress=False)
    assert stats.written == 3 + 2  # three PNGs, two split files
    assert (dst / "ImageSets/SegmentationContext/val.txt").read_text() == "2008_000001\n2008_000002\n"
    assert (dst / "ImageSets/SegmentationContext/train.txt").read_text() == "2008_000003\n"
    lab = read_label(dst / "SegmentationClassContext/2008_000002.png")
    expected = np.zeros((6, 8), np.uint8)
    expected[:, :4] = 1          # aeroplane -> 1
    expected[2:4, 2:6] = 37      # person -> 37 wins (later annotation)
    np.testing.assert_array_equal(lab, expected)
    assert read_label(dst / "SegmentationClassContext/2008_000001.png").tolist() == [[59] * 4] * 5
    assert read_label(dst / "SegmentationClassContext/2008_000003.png").max() == 0  # unannotated
    # The datamodules read the result; rerun is a no-op.
    dm = build_datamodule("context59", data_root=dst, num_workers=0)
    with pytest.warns(DatasetCountWarning):
        dm.setup("test")
    assert dm.test_dataset.ids == ["2008_000001", "2008_000002"]
    assert dm.test_dataset[1]["label"][0, 0] == 0 and dm.test_dataset[1]["label"][0, 7] == 255
    with pytest.warns(DatasetCountWarning):
        again = prep.prepare_context(src, dst, progress=False)
    assert again.written == 0 and again.skipped == 3 and again.linked == 0


def _coco_src(tmp_path, n=3):
    src = tmp_path / "coco_src"
    rng = np.random.default_rng(2)
    raws = {}
    for i in range(n):
        sid = f"{i * 1000 + 139:012d}"
        save_image(random_image(6, 9, rng), src / "images/val2017" / f"{sid}.jpg")
        raw = rng.choice(np.array([r for r, _, _ in COCO_TABLE], np.uint8), size=(6, 9))
        save_label(raw, src / "annotations/val2017" / f"{sid}.png")
        raws[sid] = raw
    return src, raws


def test_prepare_coco_in_place_and_idempotent(tmp_path):
    src, raws = _coco_src(tmp_path)
    table = {r: (s, o) for r, s, o in COCO_TABLE}
    with pytest.warns(DatasetCountWarning):
        stats = prep.prepare_coco(src, src, progress=False)
    assert stats.written == 3 and stats.linked == 0
    for sid, raw in raws.items():
        stuff = read_label(src / f"annotations/val2017/{sid}_labelTrainIds.png")
        obj = read_label(src / f"annotations/val2017/{sid}_instanceTrainIds.png")
        np.testing.assert_array_equal(stuff, np.vectorize(lambda v: table[v][0])(raw))
        np.testing.assert_array_equal(obj, np.vectorize(lambda v: table[v][1])(raw))
    mtimes = {p: p.stat().st_mtime_ns for p in (src / "annotations/val2017").iterdir()}
    with pytest.warns(DatasetCountWarning):
        again = prep.prepare_coco(src, src, progress=False)
    assert again.written == 0 and again.skipped == 3
    assert {p: p.stat().st_mtime_ns for p in (src / "annotations/val2017").iterdir()} == mtimes
    for key in ("coco_stuff", "coco_object"):
        dm = build_datamodule(key, data_root=src, num_workers=0)
        with pytest.warns(DatasetCountWarning):
            assert len(dm.verify()) == 3  # raw <id>.png maps are not picked up as samples


def test_prepare_coco_to_separate_dst_links_images(tmp_path):
    src, _ = _coco_src(tmp_path, n=2)
    dst = tmp_path / "data/coco_stuff164k"
    with pytest.warns(DatasetCountWarning):
        stats = prep.prepare_coco(src, dst, progress=False)
    assert stats.linked == 1 and (dst / "images/val2017").is_symlink()
    assert len(list((dst / "annotations/val2017").glob("*_instanceTrainIds.png"))) == 2


def test_prepare_cityscapes(tmp_path):
    src = tmp_path / "cs"
    rng = np.random.default_rng(3)
    ids = np.array([i for i, _ in CITYSCAPES_TABLE], np.uint8)
    stems = ["lindau_000001_000019", "frankfurt_000000_000294"]
    for stem in stems:
        city = stem.split("_")[0]
        save_image(random_image(5, 7, rng), src / f"leftImg8bit/val/{city}/{stem}_leftImg8bit.png")
        save_label(rng.choice(ids, size=(5, 7)), src / f"gtFine/val/{city}/{stem}_gtFine_labelIds.png")
    dst = tmp_path / "data/cityscapes"
    with pytest.warns(DatasetCountWarning):
        stats = prep.prepare_cityscapes(src, dst, progress=False)
    assert stats.written == 2
    table = dict(CITYSCAPES_TABLE)
    for stem in stems:
        city = stem.split("_")[0]
        raw = read_label(src / f"gtFine/val/{city}/{stem}_gtFine_labelIds.png")
        out = read_label(dst / f"gtFine/val/{city}/{stem}_gtFine_labelTrainIds.png")
        np.testing.assert_array_equal(out, np.vectorize(table.get)(raw))
    dm = build_datamodule("cityscapes", data_root=dst, num_workers=0)
    with pytest.warns(DatasetCountWarning):
        dm.setup("test")
    assert dm.test_dataset.ids == ["frankfurt_000000_000294", "lindau_000001_000019"]
    with pytest.warns(DatasetCountWarning):
        assert prep.prepare_cityscapes(src, dst, progress=False).written == 0


def _voc_src(tmp_path):
    src = tmp_path / "voc_extract"
    root = src / "VOCdevkit/VOC2012"
    rng = np.random.default_rng(4)
    for sid in ("2007_000033", "2007_000042"):
        save_image(random_image(4, 6, rng), root / f"JPEGImages/{sid}.jpg")
        save_label(rng.integers(0, 21, (4, 6)), root / f"SegmentationClass/{sid}.png", palette=True)
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/val.txt").write_text("2007_000042\n2007_000033\n")
    return src


def test_prepare_voc_and_ade_layout_checks(tmp_path):
    src = _voc_src(tmp_path)
    dst = tmp_path / "data/VOCdevkit/VOC2012"
    with pytest.warns(DatasetCountWarning, match="found 2 of the 1449"):
        stats = prep.prepare_voc(src, dst, progress=False)
    assert stats.linked == 3 and (dst / "JPEGImages").is_symlink()
    with pytest.warns(DatasetCountWarning):
        assert prep.prepare_voc(src, dst, progress=False).linked == 0  # rerun: no-op
    with pytest.raises(prep.PreparationError, match="ADEChallengeData2016"):
        prep.prepare_ade20k(tmp_path / "empty", tmp_path / "ade", progress=False)


def test_prepare_voc_incomplete_layout_names_missing_file(tmp_path):
    src = _voc_src(tmp_path)
    (src / "VOCdevkit/VOC2012/SegmentationClass/2007_000033.png").unlink()
    with pytest.raises(DatasetLayoutError, match="2007_000033.png"):
        prep.prepare_voc(src, tmp_path / "dst", progress=False)


# ------------------------------------------ CLI (proxyclip-prepare = scripts/prepare_data.py)
def test_every_dataset_key_has_a_preparer_with_the_common_interface():
    assert tuple(prep.PREPARERS) == ("voc", "context", "coco_stuff", "coco_object", "cityscapes", "ade20k",
                                     "ade847", "context459")
    choices = next(a.choices for a in prepare_data.build_parser()._actions if a.dest == "dataset")
    assert tuple(choices) == tuple(prep.PREPARERS)
    for preparer in prep.PREPARERS.values():
        inspect.signature(preparer).bind(Path("src"), Path("dst"), link_mode="copy", progress=False)
    inspect.signature(prep.PREPARERS["context"]).bind(Path("s"), Path("d"), json_path=Path("j.json"))
    assert prep.PREPARERS["coco_stuff"] is prep.PREPARERS["coco_object"] is prep.prepare_coco


def test_cli_dispatches_through_preparers(tmp_path, monkeypatch, capsys):
    calls = []

    def fake(src, dst, **options):
        calls.append((src, dst, options))
        return prep.PrepareStats(written=4)

    monkeypatch.setitem(prep.PREPARERS, "context", fake)
    argv = ["context", "--src", "s", "--dst", "d", "--json", "j.json", "--copy", "--no-progress"]
    assert prepare_data.main(argv) == 0
    assert calls == [(Path("s"), Path("d"), {"link_mode": "copy", "progress": False, "json_path": Path("j.json")})]
    assert capsys.readouterr().out == "context: 4 written, 0 already present, 0 folders linked\n"
    monkeypatch.setitem(prep.PREPARERS, "voc", fake)
    assert prepare_data.main(["voc", "--src", "s", "--dst", "d"]) == 0
    assert calls[-1] == (Path("s"), Path("d"), {"link_mode": "symlink", "progress": True})


def test_cli_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    cases = [
        (["context", "--src", str(tmp_path / "missing"), "--dst", str(tmp_path / "x")], str(tmp_path / "missing")),
        (["ade847", "--src", str(tmp_path / "missing"), "--dst", str(tmp_path / "o")], "does not exist"),
        (["context459", "--src", str(tmp_path), "--dst", str(tmp_path / "o"), "--download"],
         "cannot be downloaded automatically"),
        (["cityscapes", "--src", str(tmp_path), "--dst", str(tmp_path / "o"), "--download"], "login"),
        (["voc", "--src", str(tmp_path), "--dst", str(tmp_path / "o"), "--json", "x.json"], "--json"),
    ]
    for argv, expected in cases:
        code, err = _run_prepare_cli(argv + ["--no-progress"], capsys)
        assert code == 2, argv
        assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, (argv, err)


@pytest.mark.slow
def test_prepare_data_script_runs(tmp_path):
    src = _voc_src(tmp_path)
    dst = tmp_path / "data/VOCdevkit/VOC2012"
    script = str(REPO / "scripts/prepare_data.py")
    ok = subprocess.run([sys.executable, script, "voc", "--src", str(src), "--dst", str(dst), "--no-progress"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "2 / 1449" in ok.stdout and "found 2 of the 1449" in ok.stderr


@pytest.mark.slow
def test_prepare_data_script_bad_src_exits_2_with_one_error_line(tmp_path):
    script = str(REPO / "scripts/prepare_data.py")
    bad = subprocess.run([sys.executable, script, "context", "--src", str(tmp_path / "missing"), "--dst",
                          str(tmp_path / "x"), "--no-progress"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2, bad.stderr
    lines = bad.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot find the VOC2010 folder"), bad.stderr
    assert str(tmp_path / "missing") in lines[0] and "Traceback" not in bad.stderr


# ---------------------------------------------------------------- downloads
class _RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = b""
    honour_range = True
    requests: list = []

    def do_GET(self):  # noqa: N802
        rng = self.headers.get("Range")
        type(self).requests.append(rng)
        data, status = self.payload, 200
        if rng and self.honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            data, status = data[start:], 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _RangeHandler.requests = []
    yield server
    server.shutdown()
    server.server_close()


def test_download_resumes_from_partial_file(tmp_path, http_server):
    payload = bytes(range(256)) * 300
    _RangeHandler.payload, _RangeHandler.honour_range = payload, True
    url = f"http://127.0.0.1:{http_server.server_address[1]}/archive.tar"
    dest = tmp_path / "archive.tar"
    (tmp_path / "archive.tar.part").write_bytes(payload[:1000])
    md5 = hashlib.md5(payload).hexdigest()
    downloads.download(url, dest, md5=md5, progress=False, chunk_size=4096)
    assert dest.read_bytes() == payload and not (tmp_path / "archive.tar.part").exists()
    assert _RangeHandler.requests == ["bytes=1000-"]
    downloads.download(url, dest, md5=md5, progress=False)  # complete + checksum ok: no request
    assert len(_RangeHandler.requests) == 1


def test_download_restarts_when_range_ignored_and_checks_sha256(tmp_path, http_server):
    payload = b"abc" * 5000
    _RangeHandler.payload, _RangeHandler.honour_range = payload, False
    url = f"http://127.0.0.1:{http_server.server_address[1]}/f.zip"
    (tmp_path / "f.zip.part").write_bytes(b"zzz")
    downloads.download(url, tmp_path / "f.zip", sha256=hashlib.sha256(payload).hexdigest(), progress=False)
    assert (tmp_path / "f.zip").read_bytes() == payload
    with pytest.raises(prep.PreparationError, match="checksum mismatch"):
        downloads.download(url, tmp_path / "g.zip", md5="0" * 32, progress=False)
    assert not (tmp_path / "g.zip").exists()


def test_fetch_official_from_local_file_extracts_once(tmp_path):
    voc = _voc_src(tmp_path)
    archive = tmp_path / "VOCtrainval_11-May-2012.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(voc / "VOCdevkit", arcname="VOCdevkit")
    a = downloads.Archive(url=str(archive), md5=hashlib.md5(archive.read_bytes()).hexdigest())
    src = tmp_path / "downloaded"
    downloads.fetch_official("voc", src, archives=[a], progress=False)
    assert (src / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").is_file()
    assert (src / f".extracted-{archive.name}").is_file()
    downloads.fetch_official("voc", src, archives=[a], progress=False)  # no-op
    with pytest.raises(prep.PreparationError, match="login"):
        downloads.fetch_official("cityscapes", src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.warns(DatasetCountWarning):
            prep.prepare_voc(src, tmp_path / "VOC2012", progress=False)


def test_official_archive_table():
    voc = downloads.OFFICIAL_ARCHIVES["voc"][0]
    assert voc.url == "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
    assert voc.md5 == "6cd6e144f989b92b3379bac3b3de84fd"
    assert set(downloads.OFFICIAL_ARCHIVES) == set(prep.PREPARERS)
