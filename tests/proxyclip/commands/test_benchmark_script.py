"""proxyclip-benchmark (scripts/benchmark.py): its naive baseline (proxyclip_pl.reference) equals ``predict``; the JSON report is complete."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from datamodules import BENCHMARKS
from datamodules.resize import rescale_size
from proxyclip_pl import build_proxyclip, reference
from proxyclip_pl.commands import benchmark, measure
from proxyclip_pl.sliding_window import window_grid
from tiny_models import write_tiny_clip_config, write_tiny_vfm_spec

VOCAB = [["background", "wall"], ["cat"], ["dog", "puppy", "hound"], ["grass"]]


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench_models")
    return str(write_tiny_clip_config(d)), str(write_tiny_vfm_spec(d))


@pytest.fixture(scope="module")
def model_flags(model_files):
    clip, vfm = model_files
    return ["--clip", clip, "--clip-weights", "random", "--vfm", vfm, "--vfm-weights", "random", "--seed", "0"]


def _model(model_files, **kwargs):
    clip, vfm = model_files
    return build_proxyclip(VOCAB, clip=clip, clip_weights="random", vfm=vfm, vfm_weights="random", **kwargs)


# ------------------------------------------------------------------ reference loop == fast path
def test_benchmark_times_the_package_reference():
    # one naive reference: the script times proxyclip_pl.reference, it has no copy of its own
    assert benchmark.predict_one_window_at_a_time is reference.predict_one_window_at_a_time
    assert not hasattr(benchmark, "PAD_MULTIPLE")


@pytest.mark.parametrize(
    "size, settings",
    [
        ((120, 90), dict(short_side=336, slide_crop=336, slide_stride=112)),  # 448x336: 2 windows
        ((97, 131), dict(short_side=100, slide_crop=112, slide_stride=56, window_batch_size=3)),  # padded windows
        ((150, 70), dict(short_side=112, slide_crop=112, slide_stride=40, window_batch_size=8)),  # uneven overlaps
    ],
)
def test_one_window_loop_equals_predict(model_files, size, settings):
    model = _model(model_files, **settings)
    image = benchmark.synthetic_image(*size, seed=3)
    assert image.shape == (size[1], size[0], 3) and image.dtype == np.uint8
    fast = model.predict(image)
    slow = reference.predict_one_window_at_a_time(model, image)
    assert slow.dtype == torch.long and slow.shape == (size[1], size[0])
    assert torch.equal(fast, slow)
    assert len(torch.unique(fast)) > 1  # a non-trivial map

    # with a threshold that sends part of the image to class 0
    logits = torch.nn.functional.interpolate(model.slide_logits(model.preprocess(image)), size=image.shape[:2],
                                             mode="bilinear", align_corners=False)[0]
    max_prob = torch.softmax(model.logit_scale * logits, dim=0).max(dim=0).values
    # midway between two well-separated pixel values near the median, so no pixel sits on the threshold
    # (the fast path computes the best probability without a materialised softmax: ulps may differ)
    values = max_prob.flatten().sort().values
    gaps = values[1:] - values[:-1]
    middle = len(values) // 2
    i = middle + int(torch.nonzero(gaps[middle:] > 1e-4)[0])
    model.prob_thd = float((values[i] + values[i + 1]) / 2)
    fast_thd = model.predict(image)
    slow_thd = reference.predict_one_window_at_a_time(model, image)
    assert torch.equal(fast_thd, slow_thd)
    assert (fast_thd == 0).sum() > (fast == 0).sum()


def test_flop_counter_counts_cpu_attention_kernels():
    mha = torch.nn.MultiheadAttention(64, 2, batch_first=True).eval()
    x = torch.randn(2, 10, 64)
    counter = measure.flop_counter()
    with torch.no_grad(), counter:
        mha(x, x, x, need_weights=False)
    # in-projection (q, k, v) + scores + weighted sum + out-projection
    expected = 2 * 20 * 64 * 192 + 2 * 2 * (2 * 10 * 10 * 64) + 2 * 20 * 64 * 64
    assert counter.get_total_flops() == expected

    q = torch.randn(2, 3, 10, 16)
    counter = measure.flop_counter()
    with counter:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert counter.get_total_flops() == 2 * (2 * 2 * 3 * 10 * 10 * 16)


# ------------------------------------------------------------------------------ CLI / settings
def test_settings_and_vocabulary_resolution():
    args = benchmark.parse_args(["--image-size", "2048x1024"])
    assert args.image_sizes == [(2048, 1024)]
    assert benchmark.resolve_settings(args) == dict(benchmark.DEFAULT_SETTINGS, source="default")  # no silent switch
    args = benchmark.parse_args(["--image-size", "2048x1024", "--dataset-settings", "cityscapes", "--stride", "56"])
    city = BENCHMARKS["cityscapes"]
    assert benchmark.resolve_settings(args) == dict(short_side=city.short_side, crop=city.crop_size, stride=56,
                                                   prob_thd=city.prob_thd, source="cityscapes")
    vocab, name = benchmark.resolve_vocabulary("voc21")
    assert name == "voc21" and len(vocab) == 21
    assert benchmark.resolve_vocabulary(None)[0] == benchmark.DEFAULT_VOCABULARY
    with pytest.raises(ValueError):
        benchmark.resolve_vocabulary("no_such_benchmark")
    with pytest.raises(ValueError):
        benchmark.resolve_settings(benchmark.parse_args(["--dataset-settings", "nope"]))
    assert benchmark.parse_args([]).image_sizes == [(500, 375)]
    for bad in (["--image-size", "500"], ["--image-size", "0x3"], ["--precision", "64"], ["--runs", "0"]):
        with pytest.raises(SystemExit):
            benchmark.parse_args(bad)


def _check_timing(block, num_windows):
    assert len(block["times_s"]) == 2 and all(t > 0 for t in block["times_s"])
    assert block["median_s"] > 0
    assert block["images_per_s"] == pytest.approx(1 / block["median_s"])
    assert block["windows_per_s"] == pytest.approx(num_windows / block["median_s"])
    assert block["achieved_gflops"] > 0 and block["fraction_of_peak"] > 0


def _run_main(argv):
    """``main`` in this process, single-threaded (robust on a shared machine); torch's thread count restored."""
    threads = torch.get_num_threads()
    try:
        return benchmark.main(argv + ["--threads", "1"])
    finally:
        torch.set_num_threads(threads)


def _windows(size, short_side, crop, stride):
    height, width = rescale_size(size[1], size[0], short_side, 2048)
    return (width, height), len(window_grid(height, width, crop, stride))


@pytest.mark.slow
def test_fp32_report(tmp_path, model_flags, capsys):
    out = tmp_path / "bench.json"
    argv = ["--image-size", "120x90", "--image-size", "90x120", "--runs", "2", "--warmup", "1",
            "--matmul-sizes", "128,256", "--device", "cpu", "--json", str(out)] + model_flags
    assert _run_main(argv) == 0
    table = capsys.readouterr().out
    assert "120x90" in table and "speedup" in table and "wrote" in table
    report = json.loads(out.read_text())
    assert set(report) >= {"schema_version", "created", "machine", "config", "matmul_peak", "results"}
    assert set(report["machine"]) >= {"cpu_model", "torch_version", "torch_num_threads", "device", "device_name"}
    assert report["machine"]["torch_version"] == torch.__version__ and report["machine"]["device"] == "cpu"
    config = report["config"]
    assert config["precision"] == "32" and config["autocast_dtype"] is None and config["threads"] == 1
    assert config["settings"]["source"] == "default" and config["settings"]["crop"] == 336
    assert config["num_classes"] == len(benchmark.DEFAULT_VOCABULARY)
    peak = report["matmul_peak"]
    assert peak["dtype"] == "float32" and peak["gflops"] > 0 and set(peak["gflops_by_size"]) == {"128", "256"}
    assert [r["image_size"] for r in report["results"]] == [[120, 90], [90, 120]]
    for r in report["results"]:
        resized, n = _windows(r["image_size"], 336, 336, 112)
        assert r["resized_size"] == list(resized) and r["num_windows"] == n
        assert r["agreement"] == 1.0
        assert r["flops_per_image"] > 0 and sum(r["flops_by_op"].values()) == r["flops_per_image"]
        _check_timing(r["predict"], n)
        _check_timing(r["one_window_loop"], n)
        assert r["speedup"] == pytest.approx(r["one_window_loop"]["median_s"] / r["predict"]["median_s"])
        assert r["agreement_with_fp32"] is None and r["fp32_one_window_loop"] is None
        mem = r["memory"]
        assert mem["kind"] == "rss" and mem["peak_rss_mib"] > 0
        assert mem["peak_rss_mib"] >= mem["peak_rss_before_predict_mib"] > 0


def test_mixed_precision_report_with_overrides(tmp_path, model_flags):
    out = tmp_path / "bench_bf16.json"
    argv = ["--image-size", "120x90", "--runs", "2", "--warmup", "1", "--precision", "bf16-mixed",
            "--short-side", "150", "--crop", "112", "--stride", "56", "--prob-thd", "0.3",
            "--matmul-sizes", "128", "--skip-memory", "--device", "cpu", "--json", str(out)] + model_flags
    assert _run_main(argv) == 0
    report = json.loads(out.read_text())
    assert report["config"]["autocast_dtype"] == "bfloat16" and report["matmul_peak"]["dtype"] == "bfloat16"
    assert report["config"]["settings"] == dict(short_side=150, crop=112, stride=56, prob_thd=0.3, source="default",
                                                long_side_cap=2048, logit_scale=40.0)
    (r,) = report["results"]
    resized, n = _windows((120, 90), 150, 112, 56)
    assert r["resized_size"] == list(resized) and r["num_windows"] == n == 6
    assert 0.0 <= r["agreement"] <= 1.0 and 0.0 <= r["agreement_with_fp32"] <= 1.0
    _check_timing(r["predict"], n)
    assert r["fp32_one_window_loop"]["median_s"] > 0
    assert r["speedup_vs_fp32_one_window_loop"] == pytest.approx(
        r["fp32_one_window_loop"]["median_s"] / r["predict"]["median_s"])
    assert r["memory"] is None


def test_memory_probe_argv_round_trips(model_flags):
    args = benchmark.parse_args(["--image-size", "64x48", "--dataset-settings", "voc21", "--crop", "112",
                                 "--threads", "1", "--precision", "16-mixed"] + model_flags)
    argv = benchmark.probe_argv(args, (64, 48))
    assert argv[1:4] == ["-m", "proxyclip_pl.commands.benchmark", "--_memory-probe"]
    probe = benchmark.parse_args(argv[3:])
    assert probe.memory_probe and probe.image_sizes == [(64, 48)]
    for name in ("clip", "clip_weights", "vfm", "vfm_weights", "seed", "window_batch_size", "attention", "threads",
                 "precision", "dataset_settings", "crop", "short_side", "stride", "prob_thd", "vocabulary"):
        assert getattr(probe, name) == getattr(args, name), name
