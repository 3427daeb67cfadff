"""``--resume`` refuses records it cannot vouch for (another model, another checkpoint content, another vocabulary)
and accepts what does not change the result (window batch size, the same weights stated explicitly).

Each test kills a run after K records (``PROXYCLIP_CRASH_AFTER``, a simulated ``kill -9``) and resumes it changed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.synthetic import make_fake_benchmark, random_image
from script_runs import run_test_script
from tiny_models import TINY_CLIP_CONFIG, tiny_vfm, write_tiny_clip_config, write_tiny_vfm_spec

pytestmark = pytest.mark.slow

PLUGIN = '''
import os

from proxyclip_pl import build_clip, protocol_kwargs
from proxyclip_pl.methods import SCLIP


def factory(vocabulary, protocol):
    clip, tokenizer = build_clip(os.environ["PLUGIN_CLIP"], "random", seed=0)
    return SCLIP(clip, vocabulary, tokenizer=tokenizer, **protocol_kwargs(protocol))
'''


def run(args, crash_after=None, env=None):
    return run_test_script(args, crash_after, timeout=300, env=env)


def refusal(result) -> str:
    """The one ``error:`` line of a refused run."""
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    d = tmp_path_factory.mktemp("identity")
    make_fake_benchmark("voc21", d / "data", 4, sizes=((60, 80), (50, 70)))
    return d, ["--data", "voc21", "--data-root", str(d / "data"), "--accelerator", "cpu", "--num-workers", "0",
               "--text-cache-dir", str(d / "cache")]


def test_resume_with_another_plugin_model_is_refused(voc):
    d, flags = voc
    (d / "plugin").mkdir()
    (d / "plugin" / "tinyplug.py").write_text(PLUGIN)
    three = write_tiny_clip_config(d)
    two = d / "tiny_clip_2_blocks.json"
    config = json.loads(json.dumps(TINY_CLIP_CONFIG))
    config["vision_cfg"]["layers"] = 2
    two.write_text(json.dumps(config))
    out = d / "plugin_run"
    args = [*flags, "--method", "tinyplug:factory", "--output-dir", str(out)]
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(d / "plugin"), os.environ.get("PYTHONPATH")]))}
    assert run(args, crash_after=2, env={**env, "PLUGIN_CLIP": str(three)}).returncode == 137
    error = refusal(run([*args, "--resume"], env={**env, "PLUGIN_CLIP": str(two)}))
    assert "different configuration" in error and "model_fingerprint" in error
    r = run([*args, "--resume"], env={**env, "PLUGIN_CLIP": str(three)})  # the same model: accepted
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "results.json").read_text())["resumed_images"] == 2


def test_checkpoint_replaced_at_the_same_path_is_refused(voc):
    d, flags = voc
    checkpoint = d / "vfm.pth"
    torch.save(tiny_vfm("dino", seed=0).state_dict(), checkpoint)
    out = d / "checkpoint_run"
    args = [*flags, "--clip", str(write_tiny_clip_config(d)), "--vfm", str(write_tiny_vfm_spec(d)),
            "--vfm-weights", str(checkpoint), "--output-dir", str(out)]
    assert run(args, crash_after=2).returncode == 137
    torch.save(tiny_vfm("dino", seed=1).state_dict(), checkpoint)  # same path, same size, other weights
    error = refusal(run([*args, "--resume"]))
    assert "different configuration" in error and "vfm_weights_id" in error


def write_card(folder: Path, background: list[str]) -> Path:
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "ann").mkdir(exist_ok=True)
    for i in range(3):
        Image.fromarray(random_image(40, 50, rng)).save(folder / "img" / f"s{i}.jpg")
        Image.fromarray(rng.choice(np.array([0, 1, 2, 255], np.uint8), size=(40, 50))).save(folder / "ann" / f"s{i}.png")
    card = folder / "dataset.json"
    card.write_text(json.dumps({"data_root": ".", "img_dir": "img", "ann_dir": "ann", "background": True,
                                "classes": [background, "road", ["car", "vehicle"]], "short_side": 64,
                                "crop_size": 64, "stride": 32}))
    return card


def test_resume_with_an_edited_synonym_is_refused(voc):
    d, _ = voc
    card = write_card(d / "card", ["background", "sky", "sea"])
    out = d / "card_run"
    args = ["--data", str(card), "--method", "clip", "--clip", str(write_tiny_clip_config(d)),
            "--accelerator", "cpu", "--num-workers", "0", "--text-cache-dir", str(d / "cache"), "--output-dir", str(out)]
    assert run(args, crash_after=1).returncode == 137
    write_card(d / "card", ["background", "sky", "ocean"])
    error = refusal(run([*args, "--resume"]))
    assert "different configuration" in error and "vocabulary.sha256" in error


def test_window_batch_size_and_explicit_weights_may_change_on_resume(voc):
    """Records are per image and results do not depend on the windows per encoder call (so a run may move
    between CPU and GPU, whose defaults differ); the preset's weights stated explicitly are the same weights."""
    d, flags = voc
    model = ["--clip", str(write_tiny_clip_config(d)), "--vfm", str(write_tiny_vfm_spec(d)), "--vfm-weights", "random"]
    ref, out = d / "wbs_reference", d / "wbs_run"
    assert run([*flags, *model, "--output-dir", str(ref)]).returncode == 0
    assert run([*flags, *model, "--output-dir", str(out), "--window-batch-size", "1"], crash_after=2).returncode == 137
    r = run([*flags, *model, "--output-dir", str(out), "--window-batch-size", "3", "--clip-weights", "random",
             "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    got, want = (json.loads((p / "results.json").read_text()) for p in (out, ref))
    assert got["resumed_images"] == 2 and got["config"]["window_batch_size"] == 3
    assert got["config"]["clip_weights"] == want["config"]["clip_weights"] == "random"
    for field in ("mIoU", "aAcc", "mAcc", "per_class_iou", "per_class_acc"):
        assert got[field] == want[field], field
    assert np.array_equal(np.load(out / "confusion.npy"), np.load(ref / "confusion.npy"))
