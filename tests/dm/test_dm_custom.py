"""User datasets: build_datamodule("custom", ...) and JSON dataset cards."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import DatasetCardError, DatasetLayoutError, build_datamodule
from custom_datasets import write_dataset


BASE = dict(img_dir="img", ann_dir="ann", img_suffix=".jpg", seg_suffix="_gt.png")


def setup(dm):
    dm.setup("test")
    return dm.test_dataset


def test_from_arguments_with_synonyms_and_palette_labels(tmp_path):
    write_dataset(tmp_path, palette=True, split=["s2", "s0"])
    dm = build_datamodule("custom", data_root=tmp_path, classes=["road", ["car", "vehicle", "auto"], "tree"],
                          split_file="val.txt", short_side=64, num_workers=0, **BASE)
    ds = setup(dm)
    assert dm.class_names == ["road", "car", "tree"] and dm.num_classes == 3
    assert dm.preset.vocabulary == (("road",), ("car", "vehicle", "auto"), ("tree",))
    assert ds.ids == ["s2", "s0"]
    s = ds[0]
    assert s["label"].dtype == torch.int64 and set(s["label"].unique().tolist()) == {0, 1, 2, 255}
    assert min(s["image"].shape[1:]) == 64


def test_from_a_card_with_16bit_labels(tmp_path):
    data = tmp_path / "mydata"
    write_dataset(data, sixteen=True, values=(0, 1, 299, 65535))
    classes = [f"class {i}" for i in range(299)] + [["last", "final one"]]
    card = tmp_path / "cards" / "mine.json"
    card.parent.mkdir()
    card.write_text(json.dumps({"data_root": "../mydata", "classes": classes, "img_dir": "img", "ann_dir": "ann",
                                "seg_suffix": "_gt.tif", "ignore_index": 65535}))
    dm = build_datamodule(str(card), num_workers=0)
    ds = setup(dm)
    assert dm.preset.key == "mine" and dm.preset.label_bits == 16 and dm.num_classes == 300
    assert dm.data_root == (tmp_path / "mydata").resolve() or dm.data_root.resolve() == (tmp_path / "mydata").resolve()
    assert set(ds[0]["label"].unique().tolist()) == {0, 1, 299, 65535}
    assert dm.preset.vocabulary[-1] == ("last", "final one")


def test_reduce_zero_label(tmp_path):
    write_dataset(tmp_path, values=(0, 1, 2, 3))
    dm = build_datamodule("custom", data_root=tmp_path, classes=["a", "b", "c"], reduce_zero_label=True,
                          num_workers=0, **BASE)
    ds = setup(dm)
    raw = np.asarray(Image.open(tmp_path / "ann" / "s0_gt.png")).astype(np.int64)
    np.testing.assert_array_equal(ds[0]["label"].numpy(), np.where(raw == 0, 255, raw - 1))


def test_vocabulary_file_as_classes(tmp_path):
    write_dataset(tmp_path)
    (tmp_path / "classes.txt").write_text("road\ncar; vehicle\ntree\n")
    dm = build_datamodule("custom", data_root=tmp_path, classes=str(tmp_path / "classes.txt"), num_workers=0, **BASE)
    setup(dm)
    assert dm.preset.vocabulary == (("road",), ("car", "vehicle"), ("tree",))


@pytest.mark.parametrize("case,needle", [
    ("missing_label", "missing"),
    ("size", "s1.jpg is 30x21 but label"),
    ("values", "s2_gt.png has values [7]"),
])
def test_verify_names_the_bad_files(tmp_path, case, needle):
    write_dataset(tmp_path)
    if case == "missing_label":
        (tmp_path / "ann" / "s1_gt.png").unlink()
    elif case == "size":
        Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(tmp_path / "ann" / "s1_gt.png")
    else:
        lab = np.zeros((22, 30), dtype=np.uint8)
        lab[3, 3] = 7
        Image.fromarray(lab).save(tmp_path / "ann" / "s2_gt.png")
    dm = build_datamodule("custom", data_root=tmp_path, classes=["a", "b", "c"], num_workers=0, **BASE)
    with pytest.raises(DatasetLayoutError) as err:
        dm.verify()
    assert needle in str(err.value)


def test_bad_cards_and_arguments_raise_clear_errors(tmp_path):
    write_dataset(tmp_path)
    card = tmp_path / "c.json"
    for content, needle in [
        ("{not json", "not valid JSON"),
        (json.dumps({"data_root": ".", "classes": ["a"], "img_dir": "img", "ann_dir": "ann", "colour": 1}),
         "unknown key(s) ['colour']"),
        (json.dumps({"data_root": ".", "img_dir": "img", "ann_dir": "ann"}), "missing key(s) ['classes']"),
        (json.dumps({"data_root": ".", "classes": ["a", "a"], "img_dir": "img", "ann_dir": "ann"}), "repeated: ['a']"),
        (json.dumps({"data_root": ".", "classes": ["a", ""], "img_dir": "img", "ann_dir": "ann"}), "classes[1]"),
        (json.dumps({"data_root": ".", "classes": ["a", "b"], "img_dir": "img", "ann_dir": "ann", "ignore_index": 1}),
         "ignore_index 1 is a class id"),
    ]:
        card.write_text(content)
        with pytest.raises(DatasetCardError) as err:
            build_datamodule(str(card))
        assert needle in str(err.value) and (str(card) in str(err.value) or "ignore_index" in needle)
    with pytest.raises(DatasetCardError, match="dataset card not found"):
        build_datamodule(str(tmp_path / "nope.json"))
    with pytest.raises(TypeError, match="unknown option"):
        build_datamodule("custom", data_root=tmp_path, classes=["a"], img_dir="img", ann_dir="ann", colour=1)
    with pytest.raises(DatasetCardError, match="needs data_root"):
        build_datamodule("custom", classes=["a"], img_dir="img", ann_dir="ann")
    dm = build_datamodule("custom", data_root=tmp_path, classes=["a"], img_dir="nope", ann_dir="ann")
    with pytest.raises(DatasetLayoutError, match="missing folder: .*nope"):
        dm.setup("test")
