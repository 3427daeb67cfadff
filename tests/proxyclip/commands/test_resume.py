"""scripts/test.py --resume / --overwrite: per-image records survive a crash and give the uninterrupted results.

Crashes are simulated with ``PROXYCLIP_CRASH_AFTER=K`` (see ``SegmenterEvaluator``): the evaluating process dies
with ``os._exit(137)`` right after durably recording its K-th image, as a ``kill -9`` would leave it.
Every test runs scripts/test.py in subprocesses (slow); test_crash_with_one_process_resume_with_two starts two
processes (ddp).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from datamodules.synthetic import make_fake_benchmark
from proxyclip_pl.records import RECORDS_DIR, read_records
from script_runs import run_test_script
from tiny_models import write_tiny_clip_config, write_tiny_vfm_spec

pytestmark = pytest.mark.slow

SIZES = ((60, 80), (50, 70), (90, 40))
FIELDS = ("num_images", "mIoU", "aAcc", "mAcc", "per_class_iou", "per_class_acc", "ignore_index", "metric_arithmetic")


def run(args, crash_after=None):
    return run_test_script(args, crash_after, timeout=300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Miniature VOC (5 images), tiny models, and the uninterrupted reference run."""
    d = tmp_path_factory.mktemp("resume")
    data = d / "data"
    make_fake_benchmark("voc21", data, 5, sizes=SIZES)
    flags = ["--data", "voc21", "--data-root", str(data), "--clip", str(write_tiny_clip_config(d)),
             "--clip-weights", "random", "--vfm", str(write_tiny_vfm_spec(d)), "--vfm-weights", "random",
             "--accelerator", "cpu", "--num-workers", "0", "--text-cache-dir", str(d / "cache"), "--per-image"]
    ref = d / "reference"
    r = run([*flags, "--output-dir", str(ref)])
    assert r.returncode == 0, r.stderr[-3000:]
    return d, flags, ref


def assert_same_outputs(out: Path, ref: Path) -> dict:
    got, want = (json.loads((p / "results.json").read_text()) for p in (out, ref))
    for field in FIELDS:
        assert got[field] == want[field], field
    assert (out / "per_image.csv").read_text() == (ref / "per_image.csv").read_text()
    assert np.array_equal(np.load(out / "confusion.npy"), np.load(ref / "confusion.npy"))
    return got


def crash(setup, name: str, after: int) -> Path:
    d, flags, _ = setup
    out = d / name
    r = run([*flags, "--output-dir", str(out)], crash_after=after)
    assert r.returncode == 137, r.stderr[-3000:]
    assert not (out / "results.json").exists()
    _, images, dropped = read_records(out / RECORDS_DIR)
    assert sorted(images) == list(range(after)) and dropped == 0
    return out


@pytest.mark.ddp
def test_crash_with_one_process_resume_with_two(setup):
    d, flags, ref = setup
    out = crash(setup, "crash_1_then_2", 2)
    r = run([*flags, "--output-dir", str(out), "--resume", "--devices", "2"])
    assert r.returncode == 0, r.stderr[-3000:]
    got = assert_same_outputs(out, ref)
    assert got["resumed_images"] == 2 and got["config"]["world_size"] == 2
    _, images, _ = read_records(out / RECORDS_DIR)
    assert sorted(images) == list(range(5))  # each image recorded once, by whichever process evaluated it


def test_torn_last_record_is_ignored(setup):
    d, flags, ref = setup
    out = crash(setup, "torn", 3)
    (path,) = (out / RECORDS_DIR).glob("*.jsonl")
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # image 2's record torn mid-write
    _, images, dropped = read_records(out / RECORDS_DIR)
    assert sorted(images) == [0, 1] and dropped == 1
    r = run([*flags, "--output-dir", str(out), "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ignored 1 torn or corrupt record line(s)" in r.stderr
    assert assert_same_outputs(out, ref)["resumed_images"] == 2

    # everything recorded now: --resume recomputes the results from the records alone
    (out / "results.json").unlink()
    r = run([*flags, "--output-dir", str(out), "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert assert_same_outputs(out, ref)["resumed_images"] == 5


def test_other_configuration_is_refused(setup):
    d, flags, ref = setup
    out = d / "mismatch"
    shutil.copytree(ref, out)
    (out / "results.json").unlink()
    r = run([*flags, "--output-dir", str(out), "--resume", "--pamr-steps", "1"])
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "different configuration" in errors[0] and "pamr_steps" in errors[0], r.stderr[-2000:]


def test_previous_run_needs_resume_or_overwrite(setup):
    d, flags, ref = setup
    out = d / "again"
    shutil.copytree(ref, out)
    r = run([*flags, "--output-dir", str(out)])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--resume" in errors[0] and "--overwrite" in errors[0], r.stderr[-2000:]
    assert (out / "results.json").read_text() == (ref / "results.json").read_text()  # untouched

    r = run([*flags, "--output-dir", str(out), "--overwrite"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed_images" not in assert_same_outputs(out, ref)
    assert len(list((out / RECORDS_DIR).glob("*.jsonl"))) == 1  # the old records are gone
