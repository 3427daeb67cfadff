"""scripts/test.py end to end on generated miniature benchmarks with tiny seeded models."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from datamodules import build_datamodule
from datamodules.synthetic import make_fake_benchmark
from proxyclip_pl.native_protocols import DATASETS
from references import mmseg_metrics
from tiny_models import write_tiny_clip_config, write_tiny_vfm_spec
from paths import ROOT

pytestmark = pytest.mark.slow  # every test runs scripts/test.py in a subprocess
SCRIPT = ROOT / "scripts" / "test.py"
SIZES = ((60, 80), (50, 70), (90, 40))
TABLE_ORDER = list(DATASETS)  # the paper's Table 1 order, as scripts/test.py --data all runs it


def run(args, timeout=600):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e")
    data = d / "data"
    for key in ("voc21", "ade20k"):
        make_fake_benchmark(key, data, 5, sizes=SIZES)
    flags = ["--clip", str(write_tiny_clip_config(d)), "--clip-weights", "random",
             "--vfm", str(write_tiny_vfm_spec(d)), "--vfm-weights", "random", "--accelerator", "cpu",
             "--num-workers", "0", "--text-cache-dir", str(d / "cache")]
    return d, data, flags


@pytest.mark.ddp
@pytest.mark.parametrize("key", ["voc21", "ade20k"])
def test_one_and_two_devices_give_identical_results(setup, key):
    d, data, flags = setup
    outs = {}
    for devices in (1, 2):
        out = d / f"out_{key}_{devices}"
        result = run(["--data", key, "--data-root", str(data), "--devices", str(devices), "--output-dir", str(out),
                      "--save-predictions", *flags])
        assert result.returncode == 0, result.stderr[-3000:]
        outs[devices] = json.loads((out / "results.json").read_text())
        assert outs[devices]["config"]["world_size"] == devices
    one, two = outs[1], outs[2]
    assert one["num_images"] == two["num_images"] == 5
    for field in ("mIoU", "aAcc", "mAcc", "per_class_iou", "per_class_acc"):
        assert one[field] == two[field], field
    assert one["config"]["prob_thd"] == {"voc21": 0.2, "ade20k": 0.0}[key]

    # the metric recomputed from the saved label maps equals the reported one
    dm = build_datamodule(key, data_root=data / {"voc21": "VOCdevkit/VOC2012", "ade20k": "ade/ADEChallengeData2016"}[key])
    dm.setup("test")
    ds = dm.test_dataset
    preds = [np.asarray(Image.open(d / f"out_{key}_2" / "predictions" / f"{ds[i]['id']}.png")) for i in range(len(ds))]
    labels = [ds[i]["label"].numpy() for i in range(len(ds))]
    assert all(p.shape == g.shape for p, g in zip(preds, labels))
    ref = mmseg_metrics(preds, labels, len(dm.class_names))
    for field in ("mIoU", "mAcc", "aAcc"):
        assert abs(one[field] - ref[field]) <= 0.005 + 1e-9, field
    for name, iou in zip(dm.class_names, ref["iou"]):
        reported = one["per_class_iou"][name]
        assert (reported is None) == bool(np.isnan(iou))
        if reported is not None:
            assert abs(reported - iou * 100) <= 0.005 + 1e-9


@pytest.mark.ddp
def test_ddp_and_ddp_spawn_give_identical_results(setup):
    """Results reach the caller through a file under both launchers; spawn must not double-count
    (CPU tensors pickled into workers share memory)."""
    d, data, flags = setup
    outs = {}
    for strategy in ("ddp", "ddp_spawn"):
        out = d / f"out_{strategy}"
        result = run(["--data", "voc21", "--data-root", str(data), "--devices", "2", "--strategy", strategy,
                      "--limit", "3", "--output-dir", str(out), *flags])
        assert result.returncode == 0, result.stderr[-3000:]
        outs[strategy] = json.loads((out / "results.json").read_text())
        assert not (out / ".metrics.json").exists()
    one, two = outs["ddp"], outs["ddp_spawn"]
    assert one["num_images"] == two["num_images"] == 3
    for field in ("mIoU", "aAcc", "mAcc", "per_class_iou", "per_class_acc"):
        assert one[field] == two[field], field


def test_results_json_schema_and_table(setup):
    d, data, flags = setup
    out = d / "out_schema"
    result = run(["--data", "voc21", "--data-root", str(data / "VOCdevkit/VOC2012"), "--output-dir", str(out),
                  "--limit", "3", "--show-dir", str(d / "show"), *flags])
    assert result.returncode == 0, result.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["dataset"] == "voc21" and res["num_images"] == 3
    assert set(res["per_class_iou"]) == set(build_datamodule("voc21").class_names)
    cfg = res["config"]
    for k in ("clip", "vfm", "beta", "gamma", "logit_scale", "slide_crop", "slide_stride", "short_side", "precision", "versions"):
        assert k in cfg
    assert (cfg["slide_crop"], cfg["slide_stride"], cfg["short_side"]) == (336, 112, 336)
    assert "mIoU" in result.stdout and "diningtable" in result.stdout
    assert len(list((d / "show").glob("*.png"))) == 3


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--data", "nope"], "'nope'"),
        (["--data", "voc21", "--data-root", "/does/not/exist"], "/does/not/exist"),
        (["--data", "voc21", "--devices", "64"], "--devices 64"),
        (["--data", "voc21", "--output-dir", "/proc/forbidden"], "/proc/forbidden"),
        (["--data", "voc21", "--clip", "ViT-Bogus-7", "--clip-weights", "random"], "ViT-Bogus-7"),
        (["--data", "voc21", "--strategy", "fsdp"], "--strategy 'fsdp' is not supported"),
        (["--data", "voc21", "--devices", "2", "--limit", "1"], "1 image(s) for 2 processes"),
        (["--data", "voc21", "--accelerator", "gpu", "--devices", "64"], "GPUs are available"),
    ],
)
def test_cli_errors_are_one_line(setup, args, needle):
    d, data, flags = setup
    base = ["--data-root", str(data / "VOCdevkit/VOC2012")] if "--data-root" not in args else []
    model_flags = [f for f in flags]
    if "--clip" in args:
        i = model_flags.index("--clip")
        del model_flags[i:i + 4]
    if "--accelerator" in args:
        i = model_flags.index("--accelerator")
        del model_flags[i:i + 2]
    result = run(base + args + model_flags + ["--output-dir", str(d / "err")] * ("--output-dir" not in args), timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], result.stderr[-2000:]


def test_data_all_prints_a_table_row_and_writes_every_benchmark(tmp_path, setup):
    d, _, flags = setup
    data = tmp_path / "data"
    for key in TABLE_ORDER:
        make_fake_benchmark(key, data, 2, sizes=((40, 56),))
    result = run(["--data", "all", "--data-root", str(data), "--limit", "1", "--output-dir", str(tmp_path / "out"), *flags])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert list(summary)[:len(TABLE_ORDER) + 1] == TABLE_ORDER + ["avg"]  # the table row first, in order
    assert sorted(key for group in summary["passes"] for key in group) == sorted(TABLE_ORDER)  # each benchmark once
    per = [json.loads((tmp_path / "out" / k / "results.json").read_text()) for k in TABLE_ORDER]
    assert [r["dataset"] for r in per] == TABLE_ORDER and all(r["num_images"] == 1 for r in per)
    assert summary["avg"] == round(sum(r["mIoU"] for r in per) / 8, 2)
    assert all(k in result.stdout for k in TABLE_ORDER)
