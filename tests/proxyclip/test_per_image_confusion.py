"""scripts/test.py --per-image, confusion.npy, and scripts/compare_results.py on saved runs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from datamodules.synthetic import make_fake_benchmark
from tiny_models import write_tiny_clip_config, write_tiny_vfm_spec
from paths import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.ddp]  # the module fixture runs scripts/test.py with --devices 1 and 2
SCRIPT = ROOT / "scripts" / "test.py"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("perimage")
    data = d / "data"
    make_fake_benchmark("voc21", data, 5, sizes=((60, 80), (50, 70), (90, 40)))
    flags = ["--clip", str(write_tiny_clip_config(d)), "--clip-weights", "random", "--vfm",
             str(write_tiny_vfm_spec(d)), "--vfm-weights", "random", "--accelerator", "cpu", "--num-workers", "0",
             "--text-cache-dir", str(d / "cache"), "--data", "voc21", "--data-root", str(data), "--per-image"]
    outs = {}
    for name, extra in (("one", ["--devices", "1"]), ("two", ["--devices", "2"]),
                        ("maskclip", ["--devices", "1", "--method", "maskclip"])):
        out = d / name
        r = subprocess.run([sys.executable, str(SCRIPT), *flags, "--output-dir", str(out), *extra],
                           capture_output=True, text=True, timeout=900, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-3000:]
        outs[name] = out
    return d, outs


def test_confusion_reproduces_per_class_iou_exactly(runs):
    _d, outs = runs
    for name in ("one", "two"):
        res = json.loads((outs[name] / "results.json").read_text())
        conf = np.load(outs[name] / "confusion.npy")
        assert conf.dtype == np.int64 and conf.shape == (21, 21)
        inter, gt, pred = np.diag(conf).astype(np.float64), conf.sum(1), conf.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / (gt + pred - inter)
        for cls, v in zip(res["per_class_iou"], iou):
            assert res["per_class_iou"][cls] == (None if np.isnan(v) else round(v * 100, 2))
        assert res["mIoU"] == round(float(np.nanmean(iou)) * 100, 2)
        assert res["aAcc"] == round(inter.sum() / gt.sum() * 100, 2)
    np.testing.assert_array_equal(np.load(outs["one"] / "confusion.npy"), np.load(outs["two"] / "confusion.npy"))


def test_per_image_csv_identical_for_one_and_two_processes(runs):
    _d, outs = runs
    one = (outs["one"] / "per_image.csv").read_text()
    assert one == (outs["two"] / "per_image.csv").read_text()
    lines = one.splitlines()
    assert lines[0] == "id,pixels,pixel_acc,miou,classes" and len(lines) == 6
    split = (Path(json.loads((outs["one"] / "results.json").read_text())["data_root"])
             / "ImageSets/Segmentation/val.txt").read_text().split()
    assert [ln.split(",")[0] for ln in lines[1:]] == split  # dataset order
    conf = np.load(outs["one"] / "confusion.npy")
    assert sum(int(ln.split(",")[1]) for ln in lines[1:]) == conf.sum()  # pixels scored = the metric's


def test_compare_results_prints_and_plots(runs, tmp_path):
    _d, outs = runs
    png = tmp_path / "diff.png"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_results.py"), str(outs["one"] / "results.json"),
                        str(outs["maskclip"] / "results.json"), "--top", "3", "--out", str(png)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    a = json.loads((outs["one"] / "results.json").read_text())
    b = json.loads((outs["maskclip"] / "results.json").read_text())
    assert f"mIoU {b['mIoU']:.2f} vs {a['mIoU']:.2f}" in r.stdout and "B - A" in r.stdout
    diffs = [round(b["per_class_iou"][c] - a["per_class_iou"][c], 2) for c in a["per_class_iou"]
             if a["per_class_iou"][c] is not None and b["per_class_iou"][c] is not None]
    assert f"{max(diffs):+9.2f}" in r.stdout and f"{min(diffs):+9.2f}" in r.stdout
    from PIL import Image
    assert Image.open(png).format == "PNG"
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_results.py"), str(tmp_path / "x.json"),
                          str(outs["one"] / "results.json")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert bad.returncode == 2 and "x.json" in bad.stderr
