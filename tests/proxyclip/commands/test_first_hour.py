"""What a new user meets in the first hour: fast refusals, progress, quiet logs, own output folders, offline
weights, interrupt and resume (each test fails on the code before these were fixed)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datamodules.custom import CARD_KEYS
from datamodules.synthetic import make_fake_benchmark
from proxyclip_pl.commands.evaluate import parse_args
from proxyclip_pl.commands.run_record import tower_identities
from proxyclip_pl.text_cache import cached_text_embeddings
from tiny_models import tiny_clip, write_tiny_clip_config, write_tiny_vfm_spec
from paths import ROOT

SCRIPT = ROOT / "scripts" / "test.py"
#: lines of library noise a user cannot act on (issue: the first hour of a user)
NOISE = ("GPU available", "TPU available", "Tip:", "litlogger", "_pytree", "WARNING:root", "initialized randomly",
         "sync_dist", "Retrying in", "base.py:", "samples = self.verify()")


def run(args, cwd=ROOT, env=None, timeout=300):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    d = tmp_path_factory.mktemp("first_hour")
    make_fake_benchmark("voc21", d / "data", 4, sizes=((60, 80), (50, 70)))
    flags = ["--data-root", str(d / "data"), "--clip", str(write_tiny_clip_config(d)), "--vfm",
             str(write_tiny_vfm_spec(d)), "--vfm-weights", "random", "--accelerator", "cpu", "--num-workers", "0",
             "--text-cache-dir", str(d / "cache")]
    return d, flags


# ------------------------------------------------------------------------------------- 4. fast refusals
REFUSALS = {
    "bad --data": (["--data", "voc2l"], "'voc2l'"),
    "missing data root": (["--data", "voc21", "--data-root", "/no/such/root"], "/no/such/root"),
    "missing card": (["--data", "/no/card.json"], "/no/card.json"),
    "bad method": (["--data", "voc21", "--method", "proxyclp"], "'proxyclp'"),
    "negative pamr": (["--data", "voc21", "--pamr-steps", "-1"], "--pamr-steps"),
    "resume without folder": (["--data", "voc21", "--resume"], "--resume needs --output-dir"),
}


@pytest.mark.slow
def test_mistakes_are_refused_before_torch_is_imported(tmp_path):
    """Each refusal in a fresh interpreter: one error line, exit 2, and torch never imported (the time --help
    takes, not the 7-13 s of loading the libraries)."""
    (tmp_path / "root").mkdir()
    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "results.json").write_text("{}")
    cases = {**REFUSALS, "previous run": (["--data", "voc21", "--data-root", str(tmp_path / "root"),
                                           "--output-dir", str(previous)], "--resume")}
    code = (
        "import contextlib, io, json, sys\n"
        "from proxyclip_pl.commands.evaluate import cli\n"
        "out = {}\n"
        "for name, argv in json.loads(sys.argv[1]).items():\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        try:\n"
        "            sys.argv = ['proxyclip-test', *argv]; cli()\n"
        "        except SystemExit as exc:\n"
        "            out[name] = [exc.code, err.getvalue()]\n"
        "print(json.dumps({'results': out, 'torch': 'torch' in sys.modules}))\n"
    )
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, json.dumps({k: v[0] for k, v in cases.items()})],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    elapsed = time.perf_counter() - start
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.splitlines()[-1])
    assert not got["torch"], "torch was imported before the arguments were refused"
    for name, (_, needle) in cases.items():
        code_, stderr = got["results"][name]
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert code_ == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], (name, stderr)
    assert elapsed < 20  # seven refusals in one interpreter, no library loaded


def test_previous_run_refusal_offers_a_new_folder(tmp_path):
    from proxyclip_pl.commands.run_folder import prepare_output_dir

    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "x.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"pass --output-dir .*new-folder.* for a new run, --resume .*--overwrite"):
        prepare_output_dir(tmp_path, resume=False, overwrite=False, suggestion=Path("new-folder"))


# ----------------------------------------------------------------------------------------- 1. progress
def test_text_encoding_reports_its_progress_and_then_hits_the_cache(tmp_path, capfd):
    clip, tokenizer = tiny_clip(tmp_path)
    cached_text_embeddings(clip, tokenizer, ["cat", "dog", "sky"], "tiny", "random:0", tmp_path / "cache")
    err = capfd.readouterr().err
    assert re.search(r"text embeddings, 3 queries x 80 templates \(prompts\): 240/240 in [0-9.]+ s; cached in", err), err
    cached_text_embeddings(clip, tokenizer, ["cat", "dog", "sky"], "tiny", "random:0", tmp_path / "cache")
    assert "text embeddings" not in capfd.readouterr().err


# ---------------------------------------------------------------------------------- 2. weights provenance
def test_results_record_the_resolved_weights_source():
    args = parse_args(["--data", "voc21"])  # the defaults: ViT-B/16, no --clip-weights given
    towers = tower_identities(args)
    assert (towers["clip_weights"], towers["clip_weights_id"]) == ("openai", "tag:openai")
    assert (towers["vfm_weights"], towers["vfm_weights_id"]) == ("pretrained", "tag:pretrained")
    explicit = tower_identities(parse_args(["--data", "voc21", "--clip-weights", "openai"]))
    assert explicit["clip_weights_id"] == towers["clip_weights_id"]


# ------------------------------------------------------- 1, 3, 6: the main job's console and output folders
@pytest.mark.slow
def test_main_job_prints_progress_not_noise_and_two_runs_get_their_own_folders(mini):
    d, flags = mini
    first = run(["--data", "voc21,voc20", *flags], cwd=d)
    second = run(["--data", "voc21,voc20", *flags], cwd=d)
    for r in (first, second):
        assert r.returncode == 0, r.stderr[-3000:]
        for noise in NOISE:
            assert noise not in r.stderr + r.stdout, noise
        assert "model ready in" in r.stderr and "pass 1/1: voc21, voc20 (4 images)" in r.stderr
        assert re.search(r"done in [0-9.]+ s; results in outputs/proxyclip_voc21\+voc20_", r.stderr), r.stderr
    folders = sorted((d / "outputs").iterdir())
    assert len(folders) == 2 and all((f / "voc21" / "results.json").is_file() for f in folders)
    # speed, memory and device of the shared pass, the same in each of its benchmarks
    voc21, voc20 = (json.loads((folders[0] / k / "results.json").read_text()) for k in ("voc21", "voc20"))
    for key in ("seconds", "images_per_second", "peak_memory_mib", "device"):
        assert voc21[key] == voc20[key] and voc21[key], key
    assert voc21["device"] == "cpu" and 100 < voc21["peak_memory_mib"] < 24 * 1024
    assert abs(voc21["images_per_second"] - 4 / voc21["seconds"]) < 0.05 * voc21["images_per_second"]
    for f, r in zip(folders, (first, second)):
        assert f"output: outputs/{f.name}" in r.stderr  # printed at the start too


@pytest.mark.slow
@pytest.mark.ddp
def test_two_processes_share_the_default_folder_and_no_reduction_warning(mini):
    d, flags = mini
    work = d / "ddp"
    work.mkdir()
    r = run(["--data", "voc21", *flags, "--devices", "2"], cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    for noise in NOISE:
        assert noise not in r.stderr + r.stdout, noise
    (folder,) = (work / "outputs").iterdir()
    results = json.loads((folder / "results.json").read_text())
    assert results["config"]["world_size"] == 2
    # the peak over both processes (each holds the towers: well above an empty interpreter's)
    assert results["device"] == "cpu" and 100 < results["peak_memory_mib"] < 24 * 1024


# ---------------------------------------------------------------------------------------- 5. offline
@pytest.mark.slow
def test_offline_default_weights_fail_at_once_without_retries(mini, tmp_path):
    d, flags = mini
    start = time.perf_counter()
    r = run(["--data", "voc21", "--data-root", str(d / "data"), "--method", "clip", "--accelerator", "cpu",
             "--output-dir", str(tmp_path / "out"), "--text-cache-dir", str(d / "cache")],
            env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": ""})
    elapsed = time.perf_counter() - start
    assert r.returncode == 2 and "Retrying" not in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
    (line,) = errors(r)
    assert "no network: 127.0.0.1:9 cannot be reached" in line and "hf download timm/" in line
    assert line.endswith("or pass a local checkpoint file as weights")  # the whole message, not cut mid-word
    assert elapsed < 40  # building the ViT-B/16 architecture; no retries


# ------------------------------------------------------------------------------------ 9. interrupt and resume
@pytest.mark.slow
def test_ctrl_c_names_the_resume_command_which_then_completes(tmp_path):
    make_fake_benchmark("voc21", tmp_path / "data", 60, sizes=((120, 160),))
    out = tmp_path / "out"
    flags = ["--data", "voc21", "--data-root", str(tmp_path / "data"), "--clip", str(write_tiny_clip_config(tmp_path)),
             "--vfm", str(write_tiny_vfm_spec(tmp_path)), "--vfm-weights", "random", "--accelerator", "cpu",
             "--num-workers", "0", "--text-cache-dir", str(tmp_path / "cache"), "--output-dir", str(out)]
    # SIG_DFL: a shell's background job (e.g. CI started with '&') inherits SIGINT ignored, and Python keeps that
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *flags], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not any((out / "records").glob("*.jsonl")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # the first image is recorded
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    command = stderr.strip().splitlines()[-1].strip()
    assert command.endswith("--resume") and str(out) in command
    resumed = run([*flags, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    taken = re.search(r"resume: voc21: (\d+) of 60 images taken from the records", resumed.stderr)
    assert taken and 0 < int(taken.group(1)) < 60, resumed.stderr
    assert json.loads((out / "results.json").read_text())["resumed_images"] == int(taken.group(1))


# ------------------------------------------------------------------------------------------------ 8. docs
def test_help_points_only_to_docs_that_exist():
    import io
    from contextlib import redirect_stdout

    text = io.StringIO()
    with redirect_stdout(text), pytest.raises(SystemExit):
        parse_args(["--help"])
    docs = re.findall(r"docs/[A-Za-z0-9_./-]+\.(?:md|py)", text.getvalue())
    assert docs and all((ROOT / doc).is_file() for doc in docs), docs
    assert "default: a new folder" in " ".join(text.getvalue().split())


def test_every_dataset_card_key_is_explained():
    text = (ROOT / "docs" / "datasets.md").read_text()
    for key in CARD_KEYS:
        assert re.search(rf"^\| `{key}` \|.+\|", text, re.M), f"card key {key!r} has no row in docs/datasets.md"
