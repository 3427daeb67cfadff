"""The eight benchmark datamodules on generated miniature datasets in the real layouts."""

import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import (BENCHMARKS, DATAMODULES, MAIN_BENCHMARKS, DataFileError, DatasetCountWarning, DatasetLayoutError,
                         SegmentationDataModule, build_datamodule, read_label)
from datamodules.synthetic import make_fake_benchmark

ALL = list(MAIN_BENCHMARKS)  # the eight; ADE-847 / PC-459: tests/dm/test_dm_large_vocab.py
N = 5

# Expected settings, restated from docs/dataset_notes.md ('Summary') and docs/method_notes.md ('Per-dataset settings').
EXPECTED = {  # key: (C, reduce_zero_label, short_side, crop, stride, prob_thd, background, n_val)
    "voc21": (21, False, 336, 336, 112, 0.2, True, 1449),
    "voc20": (20, True, 336, 336, 112, 0.0, False, 1449),
    "context60": (60, False, 336, 336, 112, 0.15, True, 5105),
    "context59": (59, True, 336, 336, 112, 0.0, False, 5105),
    "coco_object": (81, False, 336, 336, 112, 0.25, True, 5000),
    "coco_stuff": (171, False, 336, 336, 112, 0.0, False, 5000),
    "cityscapes": (19, False, 448, 224, 112, 0.0, False, 500),
    "ade20k": (150, True, 448, 336, 112, 0.0, False, 2000),
}
FIRST_CLASS = {"voc21": "background", "voc20": "aeroplane", "context60": "background", "context59": "aeroplane",
               "coco_object": "background", "coco_stuff": "person", "cityscapes": "road", "ade20k": "wall"}


def expected_label(key: str, raw: np.ndarray) -> np.ndarray:
    """Load-time transform written out independently of the package (docs/dataset_notes.md, 'Label encodings')."""
    raw = raw.astype(np.int64)
    if BENCHMARKS[key].reduce_zero_label:
        return np.where((raw == 0) | (raw == 255), 255, raw - 1)
    return raw


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for key in ("voc21", "context60", "coco_stuff", "cityscapes", "ade20k"):  # voc20/context59/coco_object share
        make_fake_benchmark(key, root, N)
    return root


def _dm(key, data_dir, **kw):
    dm = build_datamodule(key, data_root=data_dir / BENCHMARKS[key].sub_path, num_workers=0, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetCountWarning)
        dm.setup("test")
    return dm


@pytest.mark.parametrize("key", ALL)
def test_preset_values(key):
    p = BENCHMARKS[key]
    C, reduce, short, crop, stride, thd, bg, n = EXPECTED[key]
    assert (p.num_classes, p.reduce_zero_label, p.short_side, p.crop_size, p.stride, p.prob_thd, p.background,
            p.expected_num_images) == (C, reduce, short, crop, stride, thd, bg, n)
    assert p.class_names[0] == FIRST_CLASS[key]
    lines = p.vocabulary_file.read_text().splitlines()
    assert len([ln for ln in lines if ln.strip()]) == C
    assert f"scripts/prepare_data.py {p.prepare_key} " in p.prepare_command and p.sub_path in p.prepare_command
    assert p.prepare_key in ("voc", "context", "coco_stuff", "coco_object", "cityscapes", "ade20k")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.short_side = 1  # frozen


def test_class_name_spellings():
    voc = BENCHMARKS["voc21"].class_names
    assert {"diningtable", "pottedplant", "tvmonitor"} <= set(voc) and voc[11] == "diningtable"
    assert BENCHMARKS["ade20k"].class_names[7] == "bed "
    assert BENCHMARKS["coco_stuff"].class_names[80] == "banner" and BENCHMARKS["coco_stuff"].class_names[170] == "wood"
    assert BENCHMARKS["coco_object"].class_names[10] == "traffic light"
    assert BENCHMARKS["context59"].class_names == BENCHMARKS["context60"].class_names[1:]
    assert BENCHMARKS["voc20"].class_names == BENCHMARKS["voc21"].class_names[1:]


def test_build_datamodule_rejects_unknown_name_and_options(tmp_path):
    with pytest.raises(ValueError, match="voc21.*ade20k"):
        build_datamodule("pascal")
    with pytest.raises(TypeError, match="bogus"):
        build_datamodule("voc21", bogus=1)
    dm = build_datamodule("voc21", data_root=tmp_path, short_side=448)
    assert dm.preset.short_side == 448 and BENCHMARKS["voc21"].short_side == 336
    assert isinstance(dm, DATAMODULES["voc21"]) and isinstance(dm, SegmentationDataModule)


def test_default_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("PROXYCLIP_DATA", str(tmp_path))
    assert build_datamodule("ade20k").data_root == tmp_path / "ade/ADEChallengeData2016"
    monkeypatch.delenv("PROXYCLIP_DATA")
    assert str(build_datamodule("voc21").data_root) == os.path.join("data", "VOCdevkit", "VOC2012")


@pytest.mark.parametrize("key", ALL)
def test_samples_order_ids_labels_sizes(key, data_dir):
    p = BENCHMARKS[key]
    dm = _dm(key, data_dir)
    ds = dm.test_dataset
    assert len(ds) == N and dm.class_names == list(p.class_names)
    root = dm.data_root
    if p.split_file:
        expected_ids = (root / p.split_file).read_text().split()
        assert expected_ids != sorted(expected_ids)  # fixture order is deliberately unsorted
    else:
        listing = sorted(str(q) for q in (root / p.img_dir).rglob(f"*{p.img_suffix}"))
        expected_ids = [os.path.basename(q)[: -len(p.img_suffix)] for q in listing]
    assert ds.ids == expected_ids
    for i in range(N):
        s = ds[i]
        assert s["id"] == expected_ids[i] and s["index"] == i and s["path"].endswith(p.img_suffix)
        ann = next(root.joinpath(p.ann_dir).rglob(f"{s['id']}{p.seg_suffix}"))
        raw = np.asarray(Image.open(ann))
        H0, W0 = raw.shape
        assert s["ori_size"] == (H0, W0)
        assert s["label"].dtype == torch.int64 and tuple(s["label"].shape) == (H0, W0)
        np.testing.assert_array_equal(s["label"].numpy(), expected_label(key, raw))
        vals = set(np.unique(s["label"].numpy()).tolist())
        assert vals <= set(range(p.num_classes)) | {255}
        img = s["image"]
        assert img.dtype == torch.uint8 and img.shape[0] == 3
        sf = min(2048 / max(H0, W0), p.short_side / min(H0, W0))
        assert tuple(img.shape[1:]) == (int(H0 * sf + 0.5), int(W0 * sf + 0.5))
    # Probe strip: every on-disk value occurs, so 0/255/background handling is fully covered.
    lab = ds[0]["label"].numpy()
    if key in ("voc20", "context59", "ade20k"):
        assert lab[0, 0] == 255 and lab[0, 1] == 0  # old 0 -> ignore, old 1 -> class 0
    elif key in ("voc21", "context60"):
        assert lab[0, 0] == 0 and p.background  # background is scored class 0
    if key == "coco_object":  # stuff and unlabeled became background 0, things 1..80
        assert set(np.unique(lab).tolist()) == set(range(81))
    if key in ("context60", "coco_object"):
        assert 255 not in np.unique(lab)
    if key in ("voc21", "voc20", "coco_stuff", "cityscapes"):
        assert 255 in np.unique(lab)


@pytest.mark.parametrize("key,hw,expected", [
    ("voc21", (375, 500), (336, 448)), ("voc20", (333, 500), (336, 505)),
    ("ade20k", (512, 683), (448, 598)), ("cityscapes", (256, 512), (448, 896)),
    ("coco_stuff", (640, 427), (504, 336)),
])
def test_resized_image_size_for_original_sizes(tmp_path, key, hw, expected):
    root = make_fake_benchmark(key, tmp_path, 1, sizes=(hw,))
    with pytest.warns(DatasetCountWarning):
        dm = build_datamodule(key, data_root=root, num_workers=0)
        dm.setup("test")
    s = dm.test_dataset[0]
    assert tuple(s["image"].shape) == (3, *expected) and s["ori_size"] == hw


def test_voc_palette_labels_are_read_as_indices(data_dir):
    dm = _dm("voc21", data_dir)
    ann = dm.data_root / "SegmentationClass" / f"{dm.test_dataset.ids[0]}.png"
    assert Image.open(ann).mode == "P"
    np.testing.assert_array_equal(dm.test_dataset[0]["label"].numpy(), read_label(ann))


def test_dataloader_without_trainer_gives_lists_of_samples(data_dir):
    dm = _dm("ade20k", data_dir, batch_size=2)
    batches = list(dm.test_dataloader())
    assert [len(b) for b in batches] == [2, 2, 1]
    assert [s["index"] for b in batches for s in b] == list(range(N))
    assert all(isinstance(s, dict) and "label" in s for b in batches for s in b)


def test_subset_warns_with_counts(data_dir):
    dm = build_datamodule("cityscapes", data_root=data_dir / "cityscapes", num_workers=0)
    with pytest.warns(DatasetCountWarning, match="found 5 of the 500"):
        assert len(dm.verify()) == N


# ---------------------------------------------------------------- layout errors
def test_missing_root_and_folder_errors_name_path_and_command(tmp_path):
    dm = build_datamodule("voc21", data_root=tmp_path / "nowhere")
    with pytest.raises(DatasetLayoutError) as ei:
        dm.setup("test")
    msg = str(ei.value)
    assert str(tmp_path / "nowhere") in msg and "scripts/prepare_data.py voc" in msg
    root = make_fake_benchmark("coco_stuff", tmp_path, 2)
    for f in (root / "annotations/val2017").glob("*.png"):
        f.unlink()
    os.rmdir(root / "annotations/val2017")
    with pytest.raises(DatasetLayoutError) as ei:
        build_datamodule("coco_stuff", data_root=root).setup("test")
    assert str(root / "annotations/val2017") in str(ei.value) and "prepare_data.py coco_stuff" in str(ei.value)


def test_missing_split_file_and_split_entry(tmp_path):
    root = make_fake_benchmark("context60", tmp_path, 3)
    split = root / "ImageSets/SegmentationContext/val.txt"
    split.write_text(split.read_text() + "2008_123456\n")
    with pytest.raises(DatasetLayoutError) as ei:
        build_datamodule("context60", data_root=root).setup("test")
    assert str(root / "JPEGImages/2008_123456.jpg") in str(ei.value)
    assert "prepare_data.py context" in str(ei.value)
    split.unlink()
    with pytest.raises(DatasetLayoutError, match="missing split file.*val.txt"):
        build_datamodule("context60", data_root=root).verify()


@pytest.mark.parametrize("key", ["ade20k", "cityscapes", "coco_stuff"])  # the presets listed by walking
def test_listing_skips_dot_files_like_mmengine(tmp_path, key):
    # macOS leaves AppleDouble files (._<name>) next to every copied file; mmengine's scandir skips names
    # starting with '.', so they are not samples (the count and the ids would change otherwise).
    from datamodules.dataset import build_sample_list

    preset = BENCHMARKS[key]
    root = make_fake_benchmark(key, tmp_path, 3)
    expected = build_sample_list(preset, root)
    images = sorted(p for p in (root / preset.img_dir).rglob(f"*{preset.img_suffix}"))
    for img in images:
        (img.parent / f"._{img.name}").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble magic
    (images[0].parent / f".hidden{preset.img_suffix}").write_bytes(b"")
    samples = build_sample_list(preset, root)
    assert samples == expected and len(samples) == 3
    assert not any(Path(p).name.startswith(".") for _, p, _ in samples)


def test_missing_label_for_listed_image(tmp_path):
    root = make_fake_benchmark("ade20k", tmp_path, 3)
    (root / "annotations/validation/ADE_val_00000002.png").unlink()
    with pytest.raises(DatasetLayoutError, match="ADE_val_00000002.png"):
        build_datamodule("ade20k", data_root=root).verify()


def test_more_images_than_the_split_is_an_error(tmp_path, monkeypatch):
    import dataclasses
    root = make_fake_benchmark("ade20k", tmp_path, 3)
    preset = dataclasses.replace(BENCHMARKS["ade20k"], expected_num_images=2)
    with pytest.raises(DatasetLayoutError, match="more than the 2"):
        SegmentationDataModule(preset, data_root=root).verify()


def test_corrupt_image_and_label_errors_name_the_file(tmp_path):
    root = make_fake_benchmark("voc21", tmp_path, 2)
    dm = build_datamodule("voc21", data_root=root, num_workers=0)
    with pytest.warns(DatasetCountWarning):
        dm.setup("test")
    sid = dm.test_dataset.ids[0]
    (root / f"JPEGImages/{sid}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataFileError) as ei:
        dm.test_dataset[0]
    assert f"{sid}.jpg" in str(ei.value)
    sid1 = dm.test_dataset.ids[1]
    (root / f"SegmentationClass/{sid1}.png").write_bytes(b"garbage")
    with pytest.raises(DataFileError, match=f"{sid1}.png"):
        dm.test_dataset[1]


def test_out_of_range_and_mismatched_labels_are_rejected(tmp_path):
    root = make_fake_benchmark("cityscapes", tmp_path, 1, sizes=((8, 16),))
    ann = next((root / "gtFine/val").rglob("*_labelTrainIds.png"))
    Image.fromarray(np.full((8, 16), 33, np.uint8)).save(ann)  # raw labelId, unconverted
    dm = build_datamodule("cityscapes", data_root=root, num_workers=0)
    with pytest.warns(DatasetCountWarning):
        dm.setup("test")
    with pytest.raises(DataFileError, match=r"values \[33\].*prepare_data.py cityscapes"):
        dm.test_dataset[0]
    Image.fromarray(np.zeros((9, 16), np.uint8)).save(ann)
    with pytest.raises(DataFileError, match="leftImg8bit.png.*16x8.*16x9"):
        dm.test_dataset[0]
