"""GPU checks (``pytest -m gpu``): skipped where CUDA is absent, run by a GPU owner in one command.

CUDA == CPU logits, fp16/bf16 autocast agreement with fp32, and scripts/test.py with 2 GPUs (ddp and
ddp_spawn) == 1 GPU.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from datamodules.synthetic import make_fake_benchmark
from proxyclip_pl import build_proxyclip
from tiny_models import write_tiny_clip_config, write_tiny_vfm_spec
from paths import ROOT

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
VOCAB = [["sky", "cloud"], ["cat"], ["dog", "puppy"], ["grass"]]


@pytest.fixture(scope="module")
def flags(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu")
    return {"clip": str(write_tiny_clip_config(d)), "clip_weights": "random",
            "vfm": str(write_tiny_vfm_spec(d)), "vfm_weights": "random", "text_cache_dir": str(d / "cache")}


@pytest.fixture(scope="module")
def models(flags):
    torch.backends.cuda.matmul.allow_tf32 = False  # compare full fp32 against the CPU
    torch.backends.cudnn.allow_tf32 = False
    kwargs = dict(flags, short_side=224, slide_crop=224, slide_stride=112)
    return build_proxyclip(VOCAB, **kwargs), build_proxyclip(VOCAB, device="cuda", **kwargs)


def image(seed: int = 0, size: tuple[int, int] = (180, 260)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def test_cuda_logits_and_labels_equal_the_cpu(models):
    cpu, gpu = models
    assert gpu.device.type == "cuda" and gpu.text_embeddings.is_cuda and gpu.query_to_class.is_cuda
    windows = torch.rand(3, 3, 224, 336, generator=torch.Generator().manual_seed(0))
    diff = (gpu.window_logits(windows).cpu() - cpu.window_logits(windows)).abs().max().item()
    assert diff < 1e-4, diff
    labels_cpu, labels_gpu = cpu.predict(image()), gpu.predict(image())
    assert labels_gpu.is_cuda
    assert (labels_cpu == labels_gpu.cpu()).float().mean() > 0.999


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_autocast_agrees_with_fp32(models, dtype):
    _, gpu = models
    windows = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1)).cuda()
    ref = gpu.window_logits(windows)
    with torch.autocast("cuda", dtype=dtype):
        got = gpu.window_logits(windows)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert (got - ref).abs().max() < 0.05  # cosines in [-1, 1]; bf16 keeps ~3 significant digits
    assert (got.argmax(1) == ref.argmax(1)).float().mean() > 0.9


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpus_equal_one_gpu(tmp_path, flags):
    make_fake_benchmark("voc21", tmp_path / "data", 6, sizes=((120, 160), (90, 200)))
    common = ["--data", "voc21", "--data-root", str(tmp_path / "data"), "--accelerator", "gpu", "--num-workers", "0",
              "--clip", flags["clip"], "--clip-weights", "random", "--vfm", flags["vfm"], "--vfm-weights", "random",
              "--text-cache-dir", flags["text_cache_dir"]]
    results = {}
    for devices, strategy in ((1, "auto"), (2, "ddp"), (2, "ddp_spawn")):
        out = tmp_path / f"out_{devices}_{strategy}"
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "test.py"), *common, "--devices", str(devices),
                               "--strategy", strategy, "--output-dir", str(out)],
                              capture_output=True, text=True, timeout=900, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[(devices, strategy)] = json.loads((out / "results.json").read_text())
    reference = results[(1, "auto")]
    for key, res in results.items():
        assert res["num_images"] == 6, key
        for field in ("mIoU", "aAcc", "mAcc", "per_class_iou", "per_class_acc"):
            assert res[field] == reference[field], (key, field)
