"""Trident and CorrCLIP through ``proxyclip-test``: native protocols, shared passes, resume and their inputs
(SAM tower, region masks) on a miniature with tiny random towers."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from datamodules import BENCHMARKS
from datamodules.synthetic import make_fake_benchmark
from proxyclip_pl.native_protocols import protocol_for
from script_runs import run_test_script
from tiny_models import write_tiny_clip_config, write_tiny_sam_spec, write_tiny_vfm_spec

FIELDS = ("num_images", "mIoU", "aAcc", "mAcc", "per_class_iou", "per_class_acc")


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    d = tmp_path_factory.mktemp("whole_image")
    make_fake_benchmark("voc21", d / "data", 3, sizes=((60, 80), (50, 70)))
    images = d / "data" / BENCHMARKS["voc21"].sub_path / BENCHMARKS["voc21"].img_dir
    rng = np.random.default_rng(0)
    (d / "masks" / "voc").mkdir(parents=True)
    for path in images.glob("*.jpg"):  # cached masks in the official layout: <root>/voc/<stem>.npz
        height, width = np.asarray(Image.open(path)).shape[:2]
        np.savez(d / "masks" / "voc" / f"{path.stem}.npz", instance_mask=rng.integers(0, 4, (height, width)))
    flags = ["--data-root", str(d / "data"), "--clip", str(write_tiny_clip_config(d)), "--clip-weights", "random",
             "--vfm", str(write_tiny_vfm_spec(d)), "--vfm-weights", "random", "--sam", str(write_tiny_sam_spec(d)),
             "--sam-weights", "random", "--accelerator", "cpu", "--num-workers", "0",
             "--text-cache-dir", str(d / "cache")]
    return d, flags


def results(folder, key):
    return json.loads((folder / key / "results.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["trident", "corrclip"])
def test_native_run_shares_passes_where_the_encoder_allows_and_resumes_to_the_same_numbers(mini, method):
    d, flags = mini
    flags = [*flags, "--method", method, "--data", "voc21,voc20", "--masks", str(d / "masks")]
    full = d / f"{method}_full"
    r = run_test_script([*flags, "--output-dir", str(full)])
    assert r.returncode == 0, r.stderr[-3000:]
    voc21, voc20 = results(full, "voc21"), results(full, "voc20")
    for key, res in (("voc21", voc21), ("voc20", voc20)):
        assert res["config"]["protocol_settings"]["short_side"] == protocol_for(method, key).short_side
        assert res["config"]["vocabulary"]["source"].startswith(("YuHengsss/Trident", "zdk258/CorrCLIP"))
    # CorrCLIP's VOC21/VOC20 protocols agree (336/112, the same masks): one pass; Trident's do not (448 vs 336)
    expected = [["voc21", "voc20"]] * 2 if method == "corrclip" else [["voc21"], ["voc20"]]
    assert [voc21["shared_pass"], voc20["shared_pass"]] == expected
    if method == "trident":
        assert voc21["config"]["sam"].endswith("tiny_sam_encoder.json") and voc21["config"]["sam_weights"] == "random"
    else:
        assert voc21["config"]["masks"] == str(d / "masks")
    # killed after its second image, then resumed: the same numbers
    part = d / f"{method}_resumed"
    crashed = run_test_script([*flags, "--output-dir", str(part)], crash_after=2)
    assert crashed.returncode == 137, crashed.stderr[-2000:]
    resumed = run_test_script([*flags, "--output-dir", str(part), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for key in ("voc21", "voc20"):
        assert {f: results(part, key)[f] for f in FIELDS} == {f: results(full, key)[f] for f in FIELDS}


@pytest.mark.slow
def test_corrclip_input_mistakes_are_one_line(mini, tmp_path):
    d, flags = mini
    flags = [*flags, "--method", "corrclip", "--data", "voc21", "--output-dir"]
    no_masks = run_test_script([*flags, str(tmp_path / "a")])
    assert no_masks.returncode == 2 and no_masks.stderr.strip().splitlines()[-1].startswith(
        "error: CorrCLIP needs region masks: --masks DIR"), no_masks.stderr[-1000:]
    empty = tmp_path / "empty_masks"
    empty.mkdir()
    (empty / "voc").mkdir()
    no_folder = run_test_script([*flags, str(tmp_path / "b"), "--masks", str(empty)])
    lines = [line for line in no_folder.stderr.splitlines() if line.startswith("error:")]
    assert no_folder.returncode == 2 and len(lines) == 1, no_folder.stderr[-2000:]
    assert f"neither {empty / 'voc'}/ nor {empty}/ holds <image stem>.npz masks" in lines[0]
    assert "model ready" not in no_folder.stderr  # refused before the model is built
    np.savez(empty / "voc" / "some_other_image.npz", instance_mask=np.zeros((2, 2), np.int64))
    missing = run_test_script([*flags, str(tmp_path / "c"), "--masks", str(empty)])
    lines = [line for line in missing.stderr.splitlines() if line.startswith("error:")]
    assert missing.returncode == 2 and len(lines) == 1, missing.stderr[-2000:]
    assert "no region mask for image 2007_" in lines[0] and "dk258/CorrCLIP" in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["trident", "corrclip"])
def test_every_benchmark_runs_under_the_native_protocol(method, tmp_path):
    from datamodules.synthetic import make_fake_benchmark
    from proxyclip_pl.native_protocols import DATASETS

    for key in DATASETS:
        make_fake_benchmark(key, tmp_path / "data", 1, sizes=((60, 80),))
    flags = ["--data", "all", "--method", method, "--data-root", str(tmp_path / "data"), "--clip",
             str(write_tiny_clip_config(tmp_path)), "--clip-weights", "random", "--vfm",
             str(write_tiny_vfm_spec(tmp_path)), "--vfm-weights", "random", "--sam", str(write_tiny_sam_spec(tmp_path)),
             "--sam-weights", "random", "--masks", "none", "--num-workers", "0", "--output-dir", str(tmp_path / "out"),
             "--text-cache-dir", str(tmp_path / "cache")]
    r = run_test_script(flags)
    assert r.returncode == 0, r.stderr[-3000:]
    for key in DATASETS:
        res = results(tmp_path / "out", key)
        assert res["num_images"] == 1 and res["config"]["protocol_settings"]["options"] == dict(
            protocol_for(method, key).options)


@pytest.mark.slow
def test_proxyclip_segment_reads_an_images_cached_masks_by_its_file_stem(mini, tmp_path):
    import subprocess
    import sys

    from paths import ROOT

    d, _ = mini
    image = tmp_path / "street.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(image)
    masks = tmp_path / "masks"
    masks.mkdir()
    regions = np.zeros((60, 90), dtype=np.int64)  # 0: not covered (the smallest id, never corrected)
    regions[:, 5:45], regions[:, 45:] = 1, 2  # two masks: each gets one class by the map correction
    np.savez(masks / "street.npz", instance_mask=regions)
    flags = ["--clip", str(write_tiny_clip_config(d)), "--clip-weights", "random", "--vfm",
             str(write_tiny_vfm_spec(d)), "--vfm-weights", "random", "--method", "corrclip", "--masks", str(masks),
             "--classes", "road", "car", "sky", "--out", str(tmp_path / "out.png"), "--labels-out",
             str(tmp_path / "labels.png")]
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "segment.py"), str(image), *flags],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    labels = np.asarray(Image.open(tmp_path / "labels.png"))
    assert len(np.unique(labels[:, 45:])) == 1 and len(np.unique(labels[:, 5:45])) == 1
