"""Shared encoder passes: benchmarks on the same images (VOC21/VOC20, COCO-Object/COCO-Stuff, ...) encoded once.

The property under test everywhere: a shared pass gives exactly (bit for bit) the logits, metrics and saved
predictions of separate runs, while each window is encoded once; and a crashed multi-benchmark run resumes to
the uninterrupted results, mid-pass or between passes, with another device count.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import BENCHMARKS
from datamodules.synthetic import make_fake_benchmark
from proxyclip_pl import factory
from proxyclip_pl.commands.jobs import Job, shared_passes
from proxyclip_pl.evaluation import BenchmarkEvaluator, BenchmarkScore
from proxyclip_pl.factory import build_segmenters
from proxyclip_pl.native_protocols import protocol_for
from proxyclip_pl.records import RECORDS_DIR, read_records
from proxyclip_pl.shared_pass import shared_slide_logits, shares_encoder
from proxyclip_pl.vocabulary import load_vocabulary
from script_runs import run_test_script
from tiny_models import write_tiny_clip_config, write_tiny_vfm_spec

PAIRS = ("voc21", "voc20", "coco_object", "coco_stuff")
FIELDS = ("num_images", "mIoU", "aAcc", "mAcc", "per_class_iou", "per_class_acc")



def pair(method: str, towers: dict, keys=("voc21", "voc20"), protocol="native", **kwargs):
    if method != "proxyclip":
        towers = {k: v for k, v in towers.items() if not k.startswith("vfm")}
    jobs = {k: (load_vocabulary(BENCHMARKS[k].vocabulary_file), protocol_for(method, k, protocol)) for k in keys}
    return build_segmenters(method, jobs, **towers, **kwargs)


# ----------------------------------------------------------------------------------------------- the core


class Images(list):
    """A stand-in test dataset: (id, image path, label path) samples."""

    @property
    def samples(self):
        return self


@pytest.mark.parametrize("method", ["proxyclip", "sclip", "naclip", "clearclip"])
def test_one_pass_gives_each_segmenters_own_logits_and_encodes_each_window_once(towers, method):
    models = pair(method, towers)
    a, b = models["voc21"], models["voc20"]
    assert shares_encoder(a, b) and a.clip is b.clip
    image = torch.rand(1, 3, 200, 300, generator=torch.Generator().manual_seed(0))
    shared = shared_slide_logits([a, b], image)
    encoded_once = a.windows_encoded + b.windows_encoded
    separate = [a.slide_logits(image), b.slide_logits(image)]
    assert all(torch.equal(s, t) for s, t in zip(shared, separate))
    assert shared[0].shape[1] == len(a.queries) and shared[1].shape[1] == len(b.queries)
    # the separate runs encoded every window again: twice the shared pass's count
    assert a.windows_encoded + b.windows_encoded == 3 * encoded_once > 0


def test_towers_are_built_once_for_all_benchmarks(towers, monkeypatch):
    calls = {"clip": 0, "vfm": 0}
    build_clip, build_vfm = factory.build_clip, factory.build_vfm

    def counting(name, build):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return build(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(factory, "build_clip", counting("clip", build_clip))
    monkeypatch.setattr(factory, "build_vfm", counting("vfm", build_vfm))
    models = pair("proxyclip", towers, keys=("voc21", "voc20", "cityscapes"))
    assert calls == {"clip": 1, "vfm": 1}
    assert len({id(m.clip) for m in models.values()}) == 1 and len({id(m.vfm) for m in models.values()}) == 1
    # each keeps its own vocabulary and protocol
    assert [m.num_classes for m in models.values()] == [21, 20, 19]
    assert [(m.prob_thd, m.slide_crop) for m in models.values()] == [(0.2, 336), (0.0, 336), (0.0, 224)]


def test_encoder_sharing_needs_the_same_towers_windows_and_encoder_settings(towers):
    a, b = pair("proxyclip", towers).values()
    assert shares_encoder(a, b)  # vocabulary, logit scale, thresholds, PAMR are after the encoder
    c = pair("proxyclip", towers, keys=("voc21",))["voc21"]
    assert not shares_encoder(a, c)  # same weights, but another build: other tower modules
    a.beta = 1.5
    assert not shares_encoder(a, b)
    a.beta = b.beta
    a.slide_stride = 56
    assert not shares_encoder(a, b)
    a.slide_stride = b.slide_stride
    a.window_batch_size = 3
    assert not shares_encoder(a, b)
    assert not shares_encoder(a, torch.nn.Identity())  # a plug-in without window embeddings
    with pytest.raises(ValueError, match="separate passes"):
        shared_slide_logits([a, b], torch.rand(1, 3, 64, 64))

    # the run groups jobs into passes: same encoder, same images, same test resize (SCLIP, for one, resizes
    # COCO-Object to 336 and COCO-Stuff to 448: separate passes)
    b.window_batch_size = a.window_batch_size
    images = Images([("a", "a.jpg", "a.png"), ("b", "b.jpg", "b.png")])
    protocol = protocol_for("proxyclip", "voc21", "native")

    def job(key, model, data=images, short_side=336):
        return Job(key, BENCHMARKS["voc21"], dataclasses.replace(protocol, short_side=short_side), None, data, None,
                   255, Path(key), model)

    passes = shared_passes([job("a", a), job("b", b), job("c", c), job("d", b, short_side=448),
                            job("e", b, data=Images(images[:1])), job("f", a)])
    assert [[j.key for j in g] for g in passes] == [["a", "b", "f"], ["c"], ["d"], ["e"]]


def test_a_benchmark_skips_only_the_images_it_has_recorded(towers):
    models = pair("proxyclip", towers)
    scores = [BenchmarkScore(BENCHMARKS[k].class_names, 2, recorded=rec) for k, rec in (("voc21", {0}), ("voc20", ()))]
    module = BenchmarkEvaluator(list(models.values()), scores)
    rng = np.random.default_rng(0)
    for score in scores:
        score.start(True)
    for index in range(2):
        sample = {"image": torch.from_numpy(rng.integers(0, 256, (3, 48, 64), dtype=np.uint8)), "ori_size": (48, 64),
                  "index": index, "id": str(index), "path": "",
                  "labels": [torch.from_numpy(rng.integers(0, 20, (48, 64))) for _ in range(2)]}
        module.test_step([sample], index)
    assert scores[0].metric.seen.tolist() == [0, 1] and scores[1].metric.seen.tolist() == [1, 1]
    assert models["voc21"].windows_encoded + models["voc20"].windows_encoded == 2  # one window per image, once


# ------------------------------------------------------------------------------------------ the command line


def run(args, crash_after=None):
    return run_test_script(args, crash_after, timeout=600)


N = 3  # images per miniature


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Miniatures of the two pairs, the tiny models, and one separate reference run per benchmark."""
    d = tmp_path_factory.mktemp("shared_cli")
    data = d / "data"
    for key in PAIRS:
        make_fake_benchmark(key, data, N, sizes=((60, 80), (50, 70), (40, 40)))
    flags = ["--data-root", str(data), "--clip", str(write_tiny_clip_config(d)), "--clip-weights", "random",
             "--vfm", str(write_tiny_vfm_spec(d)), "--vfm-weights", "random", "--accelerator", "cpu",
             "--num-workers", "0", "--text-cache-dir", str(d / "cache"), "--save-predictions", "--per-image"]
    for key in PAIRS:
        r = run(["--data", key, *flags, "--output-dir", str(d / "separate" / key)])
        assert r.returncode == 0, r.stderr[-3000:]
    return d, flags


def assert_like_separate_runs(d: Path, out: Path, keys=PAIRS) -> dict[str, dict]:
    got = {}
    for key in keys:
        mine, ref = out / key, d / "separate" / key
        a, b = (json.loads((p / "results.json").read_text()) for p in (mine, ref))
        for field in FIELDS:
            assert a[field] == b[field], (key, field)
        names = sorted(p.name for p in (ref / "predictions").iterdir())
        assert names and names == sorted(p.name for p in (mine / "predictions").iterdir())
        for name in names:
            assert (mine / "predictions" / name).read_bytes() == (ref / "predictions" / name).read_bytes(), (key, name)
        assert (mine / "per_image.csv").read_text() == (ref / "per_image.csv").read_text()
        assert np.array_equal(np.load(mine / "confusion.npy"), np.load(ref / "confusion.npy"))
        got[key] = a
    return got


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, pytest.param(2, marks=pytest.mark.ddp)])
def test_list_of_benchmarks_equals_separate_runs_with_each_window_encoded_once(runs, devices):
    d, flags = runs
    out = d / f"list_{devices}"
    r = run(["--data", ",".join(PAIRS), *flags, "--output-dir", str(out), "--devices", str(devices)])
    assert r.returncode == 0, r.stderr[-3000:]
    got = assert_like_separate_runs(d, out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passes"] == [["voc21", "voc20"], ["coco_object", "coco_stuff"]]
    separate = {k: json.loads((d / "separate" / k / "results.json").read_text())["windows_encoded"] for k in PAIRS}
    assert got["voc21"]["windows_encoded"] == got["voc20"]["windows_encoded"] == separate["voc21"] == separate["voc20"]
    assert summary["windows_encoded"] == separate["voc21"] + separate["coco_object"] < sum(separate.values())
    assert got["voc20"]["shared_pass"] == ["voc21", "voc20"] and got["voc21"]["config"]["world_size"] == devices


def crash_then_resume(runs, name: str, after: int, resume_devices: int = 1) -> Path:
    d, flags = runs
    out = d / name
    r = run(["--data", ",".join(PAIRS), *flags, "--output-dir", str(out)], crash_after=after)
    assert r.returncode == 137, r.stderr[-3000:]
    r = run(["--data", ",".join(PAIRS), *flags, "--output-dir", str(out), "--resume", "--devices", str(resume_devices)])
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.ddp
def test_crash_inside_a_shared_pass_resumes_with_another_device_count(runs):
    # 3 records: voc21 images 0 and 1, voc20 image 0 -> image 1 is re-encoded for voc20 only
    out = crash_then_resume(runs, "crash_mid_pass", 3, resume_devices=2)
    got = assert_like_separate_runs(runs[0], out)
    assert got["voc21"]["resumed_images"] == 2 and got["voc20"]["resumed_images"] == 1
    assert "resumed_images" not in got["coco_object"]
    for key in PAIRS:  # every image recorded exactly once per benchmark over both attempts
        _, images, dropped = read_records(out / key / RECORDS_DIR)
        assert sorted(images) == list(range(N)) and dropped == 0


@pytest.mark.slow
def test_crash_between_passes_resumes_without_reevaluating_the_finished_pass(runs):
    out = crash_then_resume(runs, "crash_between", 2 * N + 1)  # the VOC pass done, one COCO-Object record
    got = assert_like_separate_runs(runs[0], out)
    assert got["voc21"]["resumed_images"] == got["voc20"]["resumed_images"] == N
    assert got["voc21"]["windows_encoded"] == 0  # the finished pass came from its records alone
    assert got["coco_object"]["resumed_images"] == 1 and "resumed_images" not in got["coco_stuff"]


@pytest.mark.slow
def test_torn_record_in_a_shared_pass_is_evaluated_again(runs):
    d, flags = runs
    out = d / "torn"
    r = run(["--data", ",".join(PAIRS), *flags, "--output-dir", str(out)], crash_after=4)
    assert r.returncode == 137, r.stderr[-3000:]
    (path,) = (out / "voc20" / RECORDS_DIR).glob("*.jsonl")  # voc20's image 1 was the last record written
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][:-7])
    r = run(["--data", ",".join(PAIRS), *flags, "--output-dir", str(out), "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "voc20: ignored 1 torn or corrupt record line(s)" in r.stderr
    got = assert_like_separate_runs(d, out)
    assert got["voc21"]["resumed_images"] == 2 and got["voc20"]["resumed_images"] == 1


@pytest.mark.slow
def test_resume_of_a_list_with_another_configuration_is_refused(runs):
    d, flags = runs
    out = d / "mismatch"
    r = run(["--data", ",".join(PAIRS), *flags, "--output-dir", str(out)], crash_after=3)
    assert r.returncode == 137
    r = run(["--data", ",".join(PAIRS), *flags, "--output-dir", str(out), "--resume", "--seed", "1"])
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "different configuration" in errors[0] and "clip_weights_id: recorded 'random:0', now 'random:1'" in errors[0], r.stderr[-2000:]
    r = run(["--data", ",".join(PAIRS), *flags, "--output-dir", str(out)])
    assert r.returncode == 2 and "--resume" in r.stderr and "--overwrite" in r.stderr


# `--data all` killed with SIGKILL and resumed, against the uninterrupted run: tests/test_suite.py.
