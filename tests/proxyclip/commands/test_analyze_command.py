"""proxyclip-analyze {coherence,attention,similarity-stats} on a miniature COCO-Stuff with tiny random towers: the
outputs and their keys, the numbers against a brute-force computation through the Python API, 1 vs 2 processes,
and user errors in one line."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from datamodules import BENCHMARKS, build_datamodule
from datamodules.synthetic import make_fake_benchmark
from paths import ROOT
from proxyclip_pl.analysis import (analysis_input, clip_attention_scores, exact_average_precision, patch_labels,
                                   seed_patch, vfm_similarities)
from pairs_reference import pairs_of
from proxyclip_pl.cli import run_cli
from proxyclip_pl.commands.analyze import main
from proxyclip_pl.towers import build_clip, build_vfm

pytestmark = pytest.mark.filterwarnings("ignore::datamodules.base.DatasetCountWarning")  # a 3-image miniature
SCRIPT = ROOT / "scripts" / "analyze.py"
CLIP = str(ROOT / "configs" / "tiny_clip.json")
DINO = str(ROOT / "configs" / "tiny_dino.json")
SIZE = 112  # CLIP 7 x 7 patches, tiny DINO (patch 8) 14 x 14
SCORERS = ["clip_qk", "clip_qq", "clip_kk", "clip_vv", "vfm:tiny_dino"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("analyze") / "data"
    make_fake_benchmark("coco_stuff", folder, 3)
    return folder


def flags(data, out, *extra):
    return ["--data-root", str(data), "--clip", CLIP, "--clip-weights", "random", "--vfm", DINO, "--vfm-weights",
            "random", "--image-size", str(SIZE), "--accelerator", "cpu", "--num-workers", "0", "--output-dir",
            str(out), *extra]


def samples(data):
    dm = build_datamodule("coco_stuff", data_root=data / BENCHMARKS["coco_stuff"].sub_path)
    dm.setup("test")
    return [dm.test_dataset[i] for i in range(len(dm.test_dataset))]


def towers():
    return build_clip(CLIP, "random", seed=0)[0], build_vfm(DINO, "random", seed=0)


def brute_force_pairs(data):
    """Every scorer's pooled pairs of the miniature, through the Python API (rules 1-5)."""
    clip_model, (vfm, kind) = towers()
    pairs = {name: ([], []) for name in SCORERS}
    for sample in samples(data):
        x = analysis_input(sample["image"], SIZE)
        clip = clip_attention_scores(clip_model, x)
        labels = patch_labels(sample["label"], (SIZE // 16, SIZE // 16))
        for ab, scores in clip.items():
            s, t = pairs_of(scores[0].mean(0), labels)
            pairs[f"clip_{ab}"][0].append(s.numpy()), pairs[f"clip_{ab}"][1].append(t.numpy())
        similarity, grid = vfm_similarities(vfm, kind, x)
        s, t = pairs_of(similarity[0], patch_labels(sample["label"], grid))
        pairs["vfm:tiny_dino"][0].append(s.numpy()), pairs["vfm:tiny_dino"][1].append(t.numpy())
    return {name: (np.concatenate(s), np.concatenate(t)) for name, (s, t) in pairs.items()}


@pytest.mark.slow
def test_coherence_outputs_and_ap_against_all_pairs(data, tmp_path):
    out = tmp_path / "coherence"
    assert main(["coherence", *flags(data, out)]) == 0
    aps = json.loads((out / "coherence.json").read_text())
    curves = json.loads((out / "pr_curves.json").read_text())
    assert list(aps) == SCORERS and list(curves) == SCORERS
    assert (out / "pr_curves.png").stat().st_size > 0
    for name, (scores, targets) in brute_force_pairs(data).items():
        exact = exact_average_precision(scores, targets)
        assert abs(aps[name] - exact) <= 1e-5, name
        curve = curves[name]
        assert set(curve) == {"thresholds", "tp", "fp", "positives", "negatives", "precision", "recall"}
        assert curve["positives"] == targets.sum() and curve["negatives"] == (~targets).sum()
        thresholds = np.array(curve["thresholds"])
        assert len(thresholds) >= 100 and np.all(np.diff(thresholds) > 0)
        assert curve["recall"][0] >= 0.99 and curve["recall"][-1] <= 0.2
        for k in range(0, len(thresholds), max(1, len(thresholds) // 25)):
            above = scores.astype(np.float64) >= thresholds[k]
            assert (curve["tp"][k], curve["fp"][k]) == ((above & targets).sum(), (above & ~targets).sum()), name


@pytest.mark.slow
def test_similarity_stats_outputs_against_numpy(data, tmp_path):
    out = tmp_path / "stats"
    assert main(["similarity-stats", *flags(data, out, "--beta", "1.5", "--gamma", "2.0")]) == 0
    payload = json.loads((out / "similarity_stats.json").read_text())
    assert list(payload) == ["vfm:tiny_dino"] and (out / "similarity_stats.png").stat().st_size > 0
    entry = payload["vfm:tiny_dino"]
    assert set(entry) == {"num_entries", "beta", "gamma", "before", "after"}
    assert (entry["beta"], entry["gamma"]) == (1.5, 2.0)
    vfm, kind = towers()[1]
    before, after = [], []
    for sample in samples(data):
        s = vfm_similarities(vfm, kind, analysis_input(sample["image"], SIZE))[0][0].double()
        before.append(s.numpy().ravel()), after.append((2.0 * (s - 1.5 * s.mean())).numpy().ravel())
    for side, values, tol in (("before", np.concatenate(before), 0.005), ("after", np.concatenate(after), 0.01)):
        stats = entry[side]
        assert entry["num_entries"] == values.size == 3 * 14 ** 4
        for key, ref in (("mean", values.mean()), ("std", values.std()), ("min", values.min()), ("max", values.max())):
            assert stats[key] == pytest.approx(ref, abs=1e-5), (side, key)
        for key, q in (("q05", 0.05), ("q25", 0.25), ("median", 0.5), ("q75", 0.75), ("q95", 0.95)):
            assert abs(stats[key] - np.quantile(values, q)) <= tol, (side, key)
    assert entry["after"]["frac_nonnegative"] == pytest.approx((np.concatenate(after) >= 0).mean(), abs=1e-4)


@pytest.mark.slow
def test_attention_outputs(data, tmp_path):
    out = tmp_path / "attention"
    assert main(["attention", *flags(data, out, "--limit", "2", "--points", "0.5,0.5", "--points", "0.1,0.9")]) == 0
    arrays = np.load(out / "attention.npz")
    assert set(arrays.files) == {"ids", "points", "clip", "vfm:tiny_dino"}
    ids = [str(s["id"]) for s in samples(data)[:2]]
    assert list(arrays["ids"]) == ids
    np.testing.assert_array_equal(arrays["points"], [[0.5, 0.5], [0.1, 0.9]])
    assert arrays["clip"].shape == (2, 2, 7, 7) and arrays["vfm:tiny_dino"].shape == (2, 2, 14, 14)
    clip_model, (vfm, kind) = towers()
    x = analysis_input(samples(data)[1]["image"], SIZE)
    qk = clip_attention_scores(clip_model, x)["qk"][0, 0]
    np.testing.assert_allclose(arrays["clip"][1, 1].ravel(), qk[seed_patch((0.1, 0.9), (7, 7))].numpy(), atol=1e-6)
    similarity = vfm_similarities(vfm, kind, x)[0][0]
    np.testing.assert_allclose(arrays["vfm:tiny_dino"][1, 0].ravel(), similarity[seed_patch((0.5, 0.5), (14, 14))],
                               atol=1e-6)
    assert (out / "attention.png").stat().st_size > 0


def run_script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, cwd=ROOT)


@pytest.mark.slow
@pytest.mark.ddp
def test_one_and_two_processes_agree(data, tmp_path):
    results = {}
    for devices in (1, 2):
        for analysis in ("coherence", "similarity-stats"):
            out = tmp_path / f"{analysis}_{devices}"
            done = run_script(analysis, *flags(data, out, "--devices", str(devices)))
            assert done.returncode == 0, done.stderr[-3000:]
            name = "coherence.json" if analysis == "coherence" else "similarity_stats.json"
            results[analysis, devices] = json.loads((out / name).read_text())
            if analysis == "coherence":
                results["curves", devices] = json.loads((out / "pr_curves.json").read_text())
    for name in SCORERS:
        assert results["coherence", 1][name] == pytest.approx(results["coherence", 2][name], abs=1e-5)
        for key in ("positives", "negatives"):
            assert results["curves", 1][name][key] == results["curves", 2][name][key]
    one, two = results["similarity-stats", 1]["vfm:tiny_dino"], results["similarity-stats", 2]["vfm:tiny_dino"]
    assert one["num_entries"] == two["num_entries"]
    for side in ("before", "after"):
        for key, value in one[side].items():
            assert two[side][key] == pytest.approx(value, abs=1e-5), (side, key)


@pytest.mark.parametrize("case, culprit", [
    (["coherence", "--data", "nope"], "--data 'nope'"),
    (["coherence", "--data-root", "/does/not/exist"], "/does/not/exist"),
    (["coherence", "--vfm", "missing_spec.json"], "missing_spec.json"),
    (["coherence", "--vfm", DINO, "--vfm", DINO], "the same name"),
    (["coherence", "--vfm", DINO, "--vfm-weights", "random", "--vfm-weights", "random", "--vfm-weights", "random"],
     "--vfm-weights"),
    (["attention", "--points", "0.5,1.0"], "--points '0.5,1.0'"),
    (["attention", "--points", "0.5"], "--points '0.5'"),
    (["similarity-stats", "--vfm", "none"], "similarity-stats"),
    (["coherence", "--image-size", "0"], "--image-size"),
    (["coherence", "--clip", CLIP, "--clip-weights", "random", "--vfm", DINO, "--vfm-weights", "random",
      "--image-size", "120", "--accelerator", "cpu", "--limit", "1", "--num-workers", "0"], "120"),
    # DINO's patch 8 divides 120, CLIP's 16 does not: an error although similarity-stats builds no CLIP
    (["similarity-stats", "--clip", CLIP, "--vfm", DINO, "--vfm-weights", "random", "--image-size", "120",
      "--accelerator", "cpu", "--limit", "1", "--num-workers", "0"], "CLIP"),
])
def test_user_errors_are_one_line(data, tmp_path, capsys, case, culprit):
    argv = [*case, "--output-dir", str(tmp_path / "out")]
    if "--data-root" not in case:
        argv += ["--data-root", str(data)]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and culprit in err[-1], err
    assert not any("Traceback" in line for line in err)


@pytest.mark.slow
def test_console_script_reports_a_user_error_in_one_line(tmp_path):
    done = run_script("coherence", "--data", "nope", "--output-dir", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "--data 'nope'" in done.stderr
