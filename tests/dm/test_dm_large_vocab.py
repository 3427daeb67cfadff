"""ADE-847 and PASCAL Context 459: presets, 16-bit labels, the published metric arithmetic, preparation."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import BENCHMARKS, DataFileError, build_datamodule, read_label
from datamodules import label_tables as tables
from datamodules import prepare as prep
from datamodules.synthetic import make_fake_benchmark
from proxyclip_pl.metrics import SegmentationIoU
from proxyclip_pl.native_protocols import PROXYCLIP_PROTOCOLS, protocol_for
from proxyclip_pl.vocabulary import load_vocabulary
from references import mmseg_areas, mmseg_metrics

KEYS = ("ade847", "context459")


def quiet_dm(key, root, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm = build_datamodule(key, data_root=root, num_workers=0, **kw)
        dm.setup("test")
    return dm


# ----------------------------------------------------------------------------------- presets, vocabularies
@pytest.mark.parametrize("key,n,n_val,img_dir,ann_dir,split", [
    ("ade847", 847, 2000, "images_detectron2/validation", "annotations_detectron2/validation", "validation.txt"),
    ("context459", 459, 5105, "JPEGImages", "annotations_detectron2/pc459_val",
     "ImageSets/SegmentationContext/val.txt"),
])
def test_preset_values(key, n, n_val, img_dir, ann_dir, split):
    p = BENCHMARKS[key]
    assert (p.num_classes, p.expected_num_images, p.img_dir, p.ann_dir, p.split_file) == (n, n_val, img_dir, ann_dir, split)
    assert (p.short_side, p.crop_size, p.stride, p.prob_thd, p.reduce_zero_label) == (448, 336, 112, 0.0, False)
    assert (p.img_suffix, p.seg_suffix, p.label_bits, p.ignore_index, p.mmseg_histc) == (".jpg", ".tif", 16, 255, True)
    assert p.extra_label_values == (65535,) and len(set(p.class_names)) == n
    proto = PROXYCLIP_PROTOCOLS[key]
    assert (proto.short_side, proto.slide_crop, proto.slide_stride, proto.prob_thd) == (448, 336, 112, 0.0)
    assert protocol_for("sclip", key) == proto  # no native row: ProxyCLIP's protocol
    # The eight keep their exact arithmetic.
    assert all(BENCHMARKS[k].ignore_index == 255 and not BENCHMARKS[k].mmseg_histc and BENCHMARKS[k].label_bits == 8
               for k in BENCHMARKS if k not in KEYS)


def test_vocabularies_are_the_official_class_files_one_query_per_line():
    ade = load_vocabulary(BENCHMARKS["ade847"].vocabulary_file)
    pc = load_vocabulary(BENCHMARKS["context459"].vocabulary_file)
    assert len(ade) == 847 and len(pc) == 459
    # ProxyCLIP splits on '; ' only (none in these files): each line is one query, commas included.
    assert all(len(names) == 1 for names in ade + pc)
    assert ade[1] == ["building, edifice"] and ade[300] == ["altar, communion table, lords table"]
    assert BENCHMARKS["ade847"].class_names[300] == "altar, communion table, lord's table"
    assert pc[2] == ["air conditioner"] and BENCHMARKS["context459"].class_names[2] == "airconditioner"
    assert pc[-1] == ["wool"] and BENCHMARKS["context459"].class_names[255] == "monkey"


# ----------------------------------------------------------------------------------- datamodule
@pytest.mark.parametrize("key", KEYS)
def test_samples_order_ids_uint16_labels(tmp_path, key):
    root = make_fake_benchmark(key, tmp_path, 4)
    p = BENCHMARKS[key]
    dm = quiet_dm(key, root)
    split_ids = (root / p.split_file).read_text().split()
    assert dm.test_dataset.ids == split_ids and sorted(split_ids) != split_ids
    for i, sid in enumerate(split_ids):
        s = dm.test_dataset[i]
        raw = np.asarray(Image.open(root / p.ann_dir / f"{sid}.tif"))
        assert raw.dtype == np.uint16
        assert s["id"] == sid and s["label"].dtype == torch.int64
        np.testing.assert_array_equal(s["label"].numpy(), raw.astype(np.int64))  # no reduce-zero-label
        values = set(np.unique(raw).tolist())
        assert {0, 255, 65535} <= values and max(values - {65535}) == p.num_classes - 1
        assert min(s["image"].shape[1:]) == 448 or max(s["image"].shape[1:]) == 2048


def test_16bit_labels_outside_the_class_range_are_refused(tmp_path):
    root = make_fake_benchmark("ade847", tmp_path, 3)
    p = BENCHMARKS["ade847"]
    sid = (root / p.split_file).read_text().split()[0]
    bad = np.zeros((375, 500), dtype=np.uint16)
    bad[0, 0] = 900
    Image.fromarray(bad).save(root / p.ann_dir / f"{sid}.tif")
    dm = quiet_dm("ade847", root)
    with pytest.raises(DataFileError, match=f"{sid}.tif has values \\[900\\]"):
        dm.test_dataset.load_label(0)
    # An 8-bit reader refuses a 16-bit map (and says so); the 16-bit reader returns uint16.
    with pytest.raises(DataFileError, match="16-bit preset"):
        read_label(root / p.ann_dir / f"{sid}.tif")
    assert read_label(root / p.ann_dir / f"{sid}.tif", max_value=65535).dtype == np.uint16


# ----------------------------------------------------------------------------------- metric
# mmseg_areas / mmseg_metrics (tests/references.py): mmseg IoUMetric with torch.histc range semantics.
def fake_predictions(labels, num_classes, seed=0):
    """Right on 60% of the labelled pixels, random elsewhere (including every unlabeled pixel)."""
    rng = np.random.default_rng(seed)
    out = []
    for lab in labels:
        pred = rng.integers(0, num_classes, size=lab.shape)
        keep = (lab < num_classes) & (rng.random(lab.shape) < 0.6)
        pred[keep] = lab[keep]
        out.append(pred)
    return out


@pytest.mark.parametrize("key", KEYS)
def test_metric_reproduces_mmseg_histc_arithmetic_and_the_corrected_score(tmp_path, key):
    root = make_fake_benchmark(key, tmp_path, 4, sizes=((40, 60), (50, 30)))
    dm = quiet_dm(key, root)
    labels = [dm.test_dataset[i]["label"].numpy() for i in range(len(dm.test_dataset))]
    C = dm.num_classes
    preds = fake_predictions(labels, C)
    # A torch.histc check of the transcription itself, on one image.
    t_i, _, t_p, t_l = mmseg_areas(preds[0], labels[0], C, 255)
    lab_t = torch.from_numpy(labels[0][labels[0] != 255]).float()
    np.testing.assert_array_equal(torch.histc(lab_t, bins=C, min=0, max=C - 1).numpy(), t_l)

    default = SegmentationIoU(C, ignore_index=255, mmseg_histc=True, confusion=True)
    corrected = SegmentationIoU(C, ignore_index=65535, mmseg_histc=True)
    strict = SegmentationIoU(C, ignore_index=65535)
    for p, g in zip(preds, labels):
        for m in (default, corrected, strict):
            m.update(torch.from_numpy(p), torch.from_numpy(g))
    ref_metrics = mmseg_metrics(preds, labels, C, 255)
    ref, ref_iou = round(ref_metrics["mIoU"], 2), ref_metrics["iou"]
    out = default.compute()
    assert out["mIoU"] == ref
    np.testing.assert_array_equal(np.isnan(out["iou"].numpy()), np.isnan(ref_iou))
    np.testing.assert_allclose(out["iou"].numpy(), ref_iou, rtol=0, atol=1e-12)
    # Confusion + unlabeled predictions recompute the counts exactly.
    conf, extra = out["confusion"].numpy(), out["unlabeled_pred"].numpy()
    np.testing.assert_array_equal(default.pred_area.numpy(), conf.sum(0) + extra)
    np.testing.assert_array_equal(default.label_area.numpy(), conf.sum(1))
    assert extra.sum() == sum(int(((g == 65535)).sum()) for g in labels)
    # --ignore-index 65535: class 255 is scored, unlabeled pixels are not; equals the strict metric.
    ref65535 = round(mmseg_metrics(preds, labels, C, 65535)["mIoU"], 2)
    assert corrected.compute()["mIoU"] == strict.compute()["mIoU"] == ref65535
    assert corrected.compute()["mIoU"] > out["mIoU"]  # unions were inflated by the unlabeled pixels
    # Under the published arithmetic class 255 has no label pixels: its IoU is 0 (predicted somewhere) or NaN.
    assert int(default.label_area[255]) == 0 and float(out["iou"][255]) in (0.0,) or np.isnan(float(out["iou"][255]))
    assert corrected.compute()["iou"][255].item() > 0


def test_strict_metric_still_refuses_out_of_range_labels_and_ignoring_a_class():
    with pytest.raises(ValueError, match="inside the class range"):
        SegmentationIoU(847, ignore_index=255)
    m = SegmentationIoU(3, ignore_index=255)
    with pytest.raises(ValueError, match="target value"):
        m.update(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 65535))


# ----------------------------------------------------------------------------------- preparation: ADE-847
def ade_seg(ids: np.ndarray, r_extra: int = 0) -> np.ndarray:
    """RGB _seg.png encoding class ids as R = (id // 256) * 10 + r_extra, G = id % 256."""
    seg = np.zeros(ids.shape + (3,), dtype=np.uint8)
    seg[..., 0] = (ids // 256) * 10 + r_extra
    seg[..., 1] = ids % 256
    seg[..., 2] = 7  # instance channel: ignored
    return seg


def test_ade_decode_every_path():
    ids = tables.ade847_raw_ids()
    assert ids[0] == 2978 and ids[1] == 312 and ids[846] == 3148  # wall, building, adding machine
    lut = tables.ade847_lut()
    # R / 10 truncates: R in 110..119 all give 11 * 256.
    for r_extra in range(10):
        seg = ade_seg(np.array([[2978, 312, 0, 1]]), r_extra)
        np.testing.assert_array_equal(tables.decode_ade_full_seg(seg), [[2978, 312, 0, 1]])
    # id 0 (unlabeled) and ids outside the 847 (1 is not in the table) -> 65535.
    np.testing.assert_array_equal(lut[tables.decode_ade_full_seg(ade_seg(np.array([[2978, 312, 0, 1, 3148]])))],
                                  [[0, 1, 65535, 65535, 846]])
    assert 1 not in set(ids.tolist()) and lut.dtype == np.uint16
    with pytest.raises(tables.UnexpectedRawValueError, match="8-bit RGB"):
        tables.decode_ade_full_seg(np.zeros((4, 4), dtype=np.uint8), "x_seg.png")


@pytest.mark.parametrize("hw,expected", [
    ((520, 600), (512, 591)),    # w >= h > 512
    ((700, 600), (597, 512)),    # h >= w > 512: round(700 / 600 * 512) = 597
    ((600, 600), (512, 512)),
    ((512, 900), None),          # short side not above 512: kept
    ((300, 400), None),
    ((513, 520), (512, 519)),    # round(519.01...) = 519
])
def test_ade847_resize_rule(hw, expected):
    assert tables.ade847_resized_size(*hw) == expected


def make_raw_ade(src: Path, specs) -> None:
    """ADE20K_2021_17_01-like tree: images/ADE/<split>/<scene>/<name>.jpg + <name>_seg.png."""
    rng = np.random.default_rng(0)
    for name, (h, w), split in specs:
        d = src / "images" / "ADE" / split / "scene"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(d / f"{name}.jpg")
        ids = np.zeros((h, w), dtype=np.int64)
        ids[: h // 2] = 2978
        ids[h // 2:, : w // 2] = 312
        ids[h // 2:, w // 2:] = 3148
        ids[0, 0] = 1  # not one of the 847
        Image.fromarray(ade_seg(ids, r_extra=3)).save(d / f"{name}_seg.png")


def test_prepare_ade847_layout_labels_resize_idempotent(tmp_path):
    src, dst = tmp_path / "ADE20K_2021_17_01", tmp_path / "out"
    make_raw_ade(src, [("ADE_val_00000002", (600, 700), "validation"), ("ADE_val_00000001", (60, 80), "validation"),
                       ("ADE_train_00000001", (50, 50), "training"), ("ADE_frame_00000001", (50, 50), "validation")])
    with pytest.warns(UserWarning, match="2 of the 2000"):
        stats = prep.prepare_ade847(src, dst, progress=False)
    assert stats.written == 3 and (dst / "validation.txt").read_text() == "ADE_val_00000001\nADE_val_00000002\n"
    lab = np.asarray(Image.open(dst / "annotations_detectron2/validation/ADE_val_00000002.tif"))
    img = Image.open(dst / "images_detectron2/validation/ADE_val_00000002.jpg")
    assert lab.dtype == np.uint16 and lab.shape == (512, 597) and img.size == (597, 512)
    assert set(np.unique(lab).tolist()) == {0, 1, 846, 65535}
    small = np.asarray(Image.open(dst / "annotations_detectron2/validation/ADE_val_00000001.tif"))
    assert small.shape == (60, 80) and small[0, 0] == 65535 and small[0, 1] == 0 and small[-1, 0] == 1
    assert not (dst / "images_detectron2/validation/ADE_train_00000001.jpg").exists()
    with pytest.warns(UserWarning):
        again = prep.prepare_ade847(src, dst, progress=False)
    assert (again.written, again.skipped) == (0, 2)
    dm = quiet_dm("ade847", dst)
    assert dm.test_dataset.ids == ["ADE_val_00000001", "ADE_val_00000002"]
    assert int(dm.test_dataset[1]["label"].max()) == 65535


def test_prepare_ade847_errors_name_the_problem(tmp_path):
    with pytest.raises(prep.PreparationError, match="does not exist"):
        prep.prepare_ade847(tmp_path / "nope", tmp_path / "out", progress=False)
    src = tmp_path / "src"
    make_raw_ade(src, [("ADE_val_00000001", (20, 20), "validation")])
    (src / "images/ADE/validation/scene/ADE_val_00000001_seg.png").unlink()
    with pytest.raises(prep.PreparationError, match="ADE_val_00000001_seg.png"):
        prep.prepare_ade847(src, tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(prep.PreparationError, match="no validation images"):
        prep.prepare_ade847(tmp_path / "empty", tmp_path / "out", progress=False)


# ----------------------------------------------------------------------------------- preparation: PC-459
def test_convert_pc459_every_path():
    lab = np.array([[0, 1, 2], [256, 459, 0]], dtype=np.uint16)
    np.testing.assert_array_equal(tables.convert_pc459(lab), [[65535, 0, 1], [255, 458, 65535]])
    assert tables.convert_pc459(lab.astype(np.float64)).dtype == np.uint16  # MATLAB doubles are fine
    with pytest.raises(tables.UnexpectedRawValueError, match=r"m.mat: LabelMap values \[460\]"):
        tables.convert_pc459(np.array([[460]]), "m.mat")
    with pytest.raises(tables.UnexpectedRawValueError, match="non-integer"):
        tables.convert_pc459(np.array([[1.5]]))


def make_raw_pc459(root: Path, ids, labels_txt=True):
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(1)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "trainval").mkdir()
    for sid in ids:
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{sid}.jpg")
        lm = rng.integers(0, 460, (30, 40)).astype(np.uint16)
        lm[0, :3] = [0, 1, 459]
        scipy_io.savemat(root / "trainval" / f"{sid}.mat", {"LabelMap": lm})
    if labels_txt:
        (root / "labels.txt").write_text("".join(f"{i}: name{i}\n" for i in range(1, 460)))
    (root / "pascalcontext_val.txt").write_text("".join(f"{s}\n" for s in ids))


def test_prepare_context459_from_mat_files(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    root = tmp_path / "VOCdevkit" / "VOC2010"
    make_raw_pc459(root, ["2008_000009", "2008_000002"])
    with pytest.warns(UserWarning, match="2 of the 5105"):
        stats = prep.prepare_context459(tmp_path, root, progress=False)
    assert stats.written == 3
    assert (root / "ImageSets/SegmentationContext/val.txt").read_text() == "2008_000009\n2008_000002\n"
    for sid in ("2008_000009", "2008_000002"):
        out = np.asarray(Image.open(root / "annotations_detectron2/pc459_val" / f"{sid}.tif"))
        lm = scipy_io.loadmat(root / "trainval" / f"{sid}.mat")["LabelMap"].astype(np.int64)
        assert out.dtype == np.uint16 and list(out[0, :3]) == [65535, 0, 458]
        np.testing.assert_array_equal(out.astype(np.int64), np.where(lm == 0, 65535, lm - 1))
    with pytest.warns(UserWarning):
        again = prep.prepare_context459(tmp_path, root, progress=False)
    assert (again.written, again.skipped) == (0, 2)
    dm = quiet_dm("context459", root)
    assert dm.test_dataset.ids == ["2008_000009", "2008_000002"]


def test_prepare_context459_errors(tmp_path):
    pytest.importorskip("scipy.io")
    root = tmp_path / "VOC2010"
    make_raw_pc459(root, ["2008_000001", "2008_000002"])
    (root / "trainval" / "2008_000002.mat").unlink()
    with pytest.raises(prep.PreparationError, match="1 of the 2 ids .* e.g. .*2008_000002.mat"):
        prep.prepare_context459(root, tmp_path / "out", progress=False)
    (root / "labels.txt").write_text("1: accordion\n")
    with pytest.raises(prep.PreparationError, match="labels.txt lists 1 ids"):
        prep.prepare_context459(root, tmp_path / "out", progress=False)
    bad = tmp_path / "bad"
    make_raw_pc459(bad, ["2008_000001"])
    import scipy.io
    scipy.io.savemat(bad / "trainval" / "2008_000001.mat", {"Other": np.zeros((2, 2))})
    with pytest.raises(prep.PreparationError, match="no 'LabelMap'"):
        prep.prepare_context459(bad, tmp_path / "out2", progress=False)
