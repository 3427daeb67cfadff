"""scripts/test.py on ADE-847 / PC-459 miniatures: the published arithmetic, --ignore-index 65535, 16-bit outputs."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from datamodules import BENCHMARKS, build_datamodule
from datamodules.synthetic import make_fake_benchmark
from references import mmseg_metrics
from tiny_models import write_tiny_clip_config, write_tiny_vfm_spec
from paths import ROOT

pytestmark = pytest.mark.slow  # every test runs scripts/test.py in a subprocess
SCRIPT = ROOT / "scripts" / "test.py"


@pytest.mark.parametrize("key", ["ade847", "context459"])
def test_published_and_corrected_scores_with_16bit_predictions(tmp_path, key):
    data = tmp_path / "data"
    root = make_fake_benchmark(key, data, 3, sizes=((60, 80), (50, 70)))
    flags = ["--clip", str(write_tiny_clip_config(tmp_path)), "--clip-weights", "random",
             "--vfm", str(write_tiny_vfm_spec(tmp_path)), "--vfm-weights", "random", "--accelerator", "cpu",
             "--num-workers", "0", "--text-cache-dir", str(tmp_path / "cache"), "--data", key, "--data-root", str(data)]
    res = {}
    for name, extra in (("default", []), ("fixed", ["--ignore-index", "65535"])):
        out = tmp_path / name
        r = subprocess.run([sys.executable, str(SCRIPT), *flags, "--output-dir", str(out), "--save-predictions",
                            "--show-dir", str(tmp_path / f"show_{name}"), *extra],
                           capture_output=True, text=True, timeout=900, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-3000:]
        res[name] = json.loads((out / "results.json").read_text())
    assert res["default"]["ignore_index"] == 255 and res["fixed"]["ignore_index"] == 65535
    assert res["default"]["metric_arithmetic"] == "mmseg_histc"
    dm = build_datamodule(key, data_root=root, num_workers=0)
    with pytest.warns(UserWarning):
        dm.setup("test")
    ds = dm.test_dataset
    preds = []
    for i in range(len(ds)):
        im = Image.open(tmp_path / "default" / "predictions" / f"{ds.ids[i]}.png")
        assert im.mode in ("I;16", "I;16B", "I")  # 16-bit PNG: > 256 classes
        preds.append(np.asarray(im).astype(np.int64))
        assert np.array_equal(preds[-1], np.asarray(Image.open(tmp_path / "fixed" / "predictions" / f"{ds.ids[i]}.png")))
    labels = [ds[i]["label"].numpy() for i in range(len(ds))]
    C = BENCHMARKS[key].num_classes
    # the published arithmetic (histc drops the unlabeled 65535 from L only) and the corrected score
    assert abs(res["default"]["mIoU"] - mmseg_metrics(preds, labels, C, 255)["mIoU"]) <= 0.005 + 1e-9
    assert abs(res["fixed"]["mIoU"] - mmseg_metrics(preds, labels, C, 65535)["mIoU"]) <= 0.005 + 1e-9
    assert len(list((tmp_path / "show_default").glob("*.png"))) == 3


def test_dataset_card_end_to_end(tmp_path):
    from custom_datasets import write_dataset

    data = tmp_path / "mine"
    write_dataset(data, n=3)
    card = tmp_path / "mine.json"
    card.write_text(json.dumps({"data_root": "mine", "classes": ["road", ["car", "vehicle"], "tree"],
                                "img_dir": "img", "ann_dir": "ann", "seg_suffix": "_gt.png", "short_side": 64,
                                "crop_size": 32, "stride": 16}))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(SCRIPT), "--data", str(card), "--clip", str(write_tiny_clip_config(tmp_path)),
                        "--clip-weights", "random", "--vfm", str(write_tiny_vfm_spec(tmp_path)), "--vfm-weights",
                        "random", "--accelerator", "cpu", "--num-workers", "0", "--text-cache-dir",
                        str(tmp_path / "cache"), "--output-dir", str(out), "--method", "maskclip"],
                       capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["dataset"] == "mine" and res["num_images"] == 3 and list(res["per_class_iou"]) == ["road", "car", "tree"]
    assert res["config"]["vocabulary"]["num_queries"] == 4 and (res["config"]["short_side"], res["config"]["slide_crop"]) == (64, 32)
    bad = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path / "nope.json")], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert bad.returncode == 2 and "nope.json" in bad.stderr
