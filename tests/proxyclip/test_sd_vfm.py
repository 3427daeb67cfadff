"""Stable Diffusion's UNet as ProxyCLIP's VFM (DIFT's recipe, contract: docs/sd_vfm.md), on the tiny random SD of
``configs/tiny_sd.json`` (float32, CPU).

The features are compared with a literal transcription of DIFT's featurizer (tests/dift_reference.py) under the
contract's fixed draws; the acceptance bound is ``max|d| <= 1e-4 * max(1, max|reference|)``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers", reason="Stable Diffusion VFMs need the extra [sd]")
pytest.importorskip("transformers", reason="Stable Diffusion VFMs need the extra [sd]")

from proxyclip_pl import ProxyCLIP, WeightsNotFoundError, build_proxyclip, build_vfm  # noqa: E402
from proxyclip_pl.sd_features import StableDiffusionVFM, empty_prompt_ids  # noqa: E402
from proxyclip_pl.towers import check_vfm_name  # noqa: E402
from proxyclip_pl.vfm import VFM_KINDS, vfm_features  # noqa: E402
from paths import ROOT  # noqa: E402
from tiny_models import (TINY_SD_SPEC, sd2_tokenizer, tiny_clip, tiny_sd_components, write_tiny_clip_config,  # noqa: E402
                         write_tiny_sd_folder)

SPEC = str(TINY_SD_SPEC)
VOCAB = [["sky"], ["cat", "kitten"], ["dog"]]
#: a multiple of the UNet's 2**3 on the latent (64 -> 8), and two that are not (48 x 80 -> 6 x 10, 40 x 56 -> 5 x 7):
#: DIFT's / diffusers' upsample_size forwarding
SIZES = ((64, 64), (48, 80), (40, 56))


def windows(sizes=SIZES, seed=3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, h, w, generator=g) for h, w in sizes]


def bound(reference: torch.Tensor) -> float:
    """The contract's acceptance bound."""
    return 1e-4 * max(1.0, reference.abs().max().item())


@pytest.fixture(scope="module")
def dift(tmp_path_factory):
    """DIFT's featurizer (the transcription) on the tiny SD's seed-0 weights, with SD-2's real tokenizer."""
    from dift_reference import SDFeaturizer

    c = tiny_sd_components(seed=0)
    tokenizer = sd2_tokenizer(tmp_path_factory.mktemp("bpe"))
    return SDFeaturizer(c["unet"], c["vae"], c["text_encoder"], tokenizer, c["scheduler"])


@pytest.fixture(scope="module")
def sd():
    model, kind = build_vfm(SPEC, "random", seed=0)
    assert kind == "sd" and isinstance(model, StableDiffusionVFM)
    return model


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return write_tiny_sd_folder(tmp_path_factory.mktemp("tiny_sd"), seed=0)


# ------------------------------------------------------------------------------------------ DIFT parity
@pytest.mark.parametrize("ensemble", [1, 3])
@pytest.mark.parametrize("up_ft_index", [0, 1, 2, 3])
def test_features_equal_dift_transcription(dift, up_ft_index, ensemble):
    from dift_reference import dift_window_features

    model, _ = build_vfm(SPEC, "random", seed=0, up_ft_index=up_ft_index, ensemble=ensemble)
    for window in windows():
        got = vfm_features(model, "sd", window, 336)
        ref = dift_window_features(dift, window, seed=0, t=261, up_ft_index=up_ft_index, ensemble=ensemble)
        assert got.dtype == torch.float32 and got.shape == ref.shape
        assert (got - ref).abs().max().item() <= bound(ref), (window.shape, up_ft_index, ensemble)


def test_stretched_windows_and_other_t_and_seed_equal_dift(dift):
    """``input_size`` (a 9 x 9 latent: forwarding again), another timestep, another seed of the draws."""
    from dift_reference import dift_window_features

    model, _ = build_vfm(SPEC, "random", seed=0, input_size=72, t=999, ensemble=2)
    for window in windows(((64, 64), (30, 50))):
        got = model(window)
        assert got.shape[-2:] == (5, 5)  # latent 9 x 9 -> 5 -> 3 -> 2 down; up 2 -> 3 -> 5
        ref = dift_window_features(dift, window, seed=0, t=999, up_ft_index=1, ensemble=2, input_size=72)
        assert (got - ref).abs().max().item() <= bound(ref)
    model.seed = 5  # the draws' seed (the weights stay): DIFT with a generator seeded with 5
    window = windows(((64, 64),))[0]
    ref = dift_window_features(dift, window, seed=5, t=999, up_ft_index=1, ensemble=2, input_size=72)
    assert (model(window) - ref).abs().max().item() <= bound(ref)


def test_grid_is_one_sixteenth_of_the_window_for_up_ft_index_1(sd):
    assert vfm_features(sd, "sd", torch.rand(1, 3, 336, 336), 336).shape == (1, 16, 21, 21)  # latents 42 x 42


def test_sd21_architecture_gives_the_contracts_grid():
    """SD-2.1's UNet (865.9 M parameters) and VAE built on the meta device (no memory, no weights): 336 windows give
    21 x 21 x 1280 (latents 42 x 42: upsample_size forwarded), stretched to 768 (``sd-2-1``) 48 x 48."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(
            sample_size=96, block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
            cross_attention_dim=1024, use_linear_projection=True, upcast_attention=True,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=768)
        prompt = torch.zeros(1, 77, 1024)
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 1) == 865.9
    model = StableDiffusionVFM(unet, vae, DDIMScheduler(), prompt)
    assert model(torch.rand(2, 3, 336, 336, device="meta")).shape == (2, 1280, 21, 21)
    model.input_size = 768
    assert model(torch.rand(1, 3, 336, 336, device="meta")).shape == (1, 1280, 48, 48)


# ------------------------------------------------------------------------------------------ draws
def test_features_do_not_depend_on_the_batch(sd):
    batch = torch.rand(3, 3, 48, 80, generator=torch.Generator().manual_seed(1))
    batched = vfm_features(sd, "sd", batch, 48)
    single = torch.cat([vfm_features(sd, "sd", w[None], 48) for w in batch])
    reordered = vfm_features(sd, "sd", batch.flip(0), 48).flip(0)
    assert torch.equal(batched, single) and torch.equal(batched, reordered)


def test_same_seed_identical_other_seed_other_draws_caller_rng_untouched(sd):
    window = windows()[1]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    again, _ = build_vfm(SPEC, "random", seed=0)
    assert torch.equal(again(window), sd(window)) and torch.equal(sd(window), sd(window))
    assert torch.equal(torch.get_rng_state(), state)  # neither building nor the draws touch the caller's RNG
    other, _ = build_vfm(SPEC, "random", seed=1)  # other weights and other draws
    assert not torch.equal(other.unet.conv_in.weight, sd.unet.conv_in.weight)
    # the contract's draws: eps, then noise, [E, c, h', w'] from one CPU generator seeded with the seed
    g = torch.Generator("cpu").manual_seed(1)
    eps, noise = other.draws((4, 6, 10))
    assert torch.equal(eps, torch.randn((2, 4, 6, 10), generator=g))
    assert torch.equal(noise, torch.randn((2, 4, 6, 10), generator=g))
    assert not torch.equal(eps, sd.draws((4, 6, 10))[0])
    sd.seed = 1  # the same weights, other draws
    try:
        assert not torch.allclose(sd(window), again(window))
    finally:
        sd.seed = 0


def test_empty_prompt_token_ids_are_sd2s(tmp_path):
    ids = empty_prompt_ids(77)
    assert ids.shape == (1, 77) and ids[0, :2].tolist() == [49406, 49407] and not ids[0, 2:].any()
    tokenizer = sd2_tokenizer(tmp_path)  # SD-2's tokenizer: "" padded with "!" (id 0)
    assert tokenizer("", padding="max_length", max_length=77, truncation=True).input_ids == ids[0].tolist()


# ------------------------------------------------------------------------------------------ specs and weights
def write_spec(tmp_path, **changes) -> str:
    spec = json.loads(TINY_SD_SPEC.read_text())
    spec.update(changes)
    for key in [k for k, v in changes.items() if v is ...]:
        del spec[key]
    path = tmp_path / "sd.json"
    path.write_text(json.dumps(spec))
    return str(path)


@pytest.mark.parametrize("changes,key", [
    ({"unet": ...}, "unet"), ({"vae": ...}, "vae"), ({"text_encoder": ...}, "text_encoder"),
    ({"up_ft_index": 4}, "up_ft_index"), ({"up_ft_index": -1}, "up_ft_index"), ({"up_ft_index": "1"}, "up_ft_index"),
    ({"t": 1000}, "t"), ({"t": -1}, "t"), ({"t": 2.5}, "t"), ({"ensemble": 0}, "ensemble"),
    ({"input_size": 0}, "input_size"), ({"unet_config": {}}, "unet_config"),
])
def test_bad_spec_is_a_value_error_naming_the_key(tmp_path, changes, key):
    path = write_spec(tmp_path, **changes)
    with pytest.raises(ValueError, match=f"'{key}'"):
        build_vfm(path, "random")
    if key not in ("unet", "vae", "text_encoder"):  # the configs are needed by 'random' weights only
        with pytest.raises(ValueError, match=f"'{key}'"):
            check_vfm_name(path)  # the cheap check before any tower is built


@pytest.mark.parametrize("override,key", [({"up_ft_index": 4}, "up_ft_index"), ({"t": 1000}, "t"),
                                          ({"ensemble": 0}, "ensemble"), ({"steps": 2}, "steps")])
def test_bad_override_is_a_value_error_naming_the_key(override, key):
    with pytest.raises(ValueError, match=f"'{key}'"):
        build_vfm(SPEC, "random", **override)


def test_presets_are_checked_without_building():
    for name in ("sd-2-1", "sd-2-1-base"):
        check_vfm_name(name)
    from proxyclip_pl.sd_vfm import read_sd_spec

    assert read_sd_spec("sd-2-1") == {"kind": "sd", "repo": "stabilityai/stable-diffusion-2-1", "t": 261,
                                      "up_ft_index": 1, "ensemble": 8, "input_size": 768}
    assert read_sd_spec("sd-2-1-base")["input_size"] == 512


def test_pretrained_offline_is_one_line_naming_the_repo_and_hf_download(monkeypatch, tmp_path, capfd):
    import socket
    import warnings

    from huggingface_hub import constants

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in a test")

    for module, name in ((socket.socket, "connect"), (socket, "create_connection"), (socket, "getaddrinfo")):
        monkeypatch.setattr(module, name, refuse)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsNotFoundError) as info, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        build_vfm("sd-2-1", "pretrained")
    # no library noise beside the one line: diffusers' accelerate advice, huggingface_hub's deprecation notice
    assert not [w for w in caught if "local_dir_use_symlinks" in str(w.message)]
    assert "accelerate" not in capfd.readouterr().err
    message = str(info.value)
    assert "\n" not in message and "`hf download stabilityai/stable-diffusion-2-1`" in message
    assert "HF_HUB_OFFLINE=1" in message and str(tmp_path / "hub") in message and attempts == []
    with pytest.raises(ValueError, match="no 'repo'"):
        build_vfm(SPEC, "pretrained")


def test_missing_or_incomplete_local_folder_is_a_user_error_naming_it(tmp_path):
    missing = tmp_path / "no_such_sd"
    with pytest.raises(WeightsNotFoundError, match=re.escape(str(missing))) as info:
        build_vfm("sd-2-1", str(missing))
    assert isinstance(info.value, FileNotFoundError)
    (tmp_path / "half" / "unet").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"half lacks vae/, text_encoder/, tokenizer/, scheduler/"):
        build_vfm("sd-2-1", str(tmp_path / "half"))


@pytest.mark.slow  # saves and loads the five components
def test_local_diffusers_folder_gives_the_features_of_the_random_model(sd, sd_folder):
    loaded, kind = build_vfm(SPEC, str(sd_folder), seed=0)
    assert kind == "sd" and loaded.source == str(sd_folder)
    assert torch.equal(loaded.prompt_embeds, sd.prompt_embeds)  # the folder's tokenizer gives SD-2's ids
    for window in windows():
        assert torch.equal(loaded(window), sd(window))


@pytest.mark.slow  # a subprocess
def test_without_diffusers_a_user_error_names_the_extra(tmp_path):
    blocker = tmp_path / "blocked" / "diffusers"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named diffusers (blocked by the test)')\n")
    code = ("from proxyclip_pl import build_vfm\n"
            "from proxyclip_pl.cli import USER_ERRORS\n"
            "from proxyclip_pl.towers import check_vfm_name\n"
            f"for call in (lambda: build_vfm({SPEC!r}, 'random'), lambda: check_vfm_name('sd-2-1')):\n"
            "    try:\n        call()\n"
            "    except USER_ERRORS as exc:\n        print(type(exc).__name__, exc)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker.parent), str(ROOT)])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == 2, r.stdout + r.stderr[-2000:]
    assert all(line.startswith("ValueError") and "pip install 'proxyclip_pl[sd]'" in line for line in lines), lines


# ------------------------------------------------------------------------------------------ ProxyCLIP
def test_sd_is_a_vfm_kind_and_proxyclip_segments_with_it(sd, tmp_path):
    assert "sd" in VFM_KINDS
    clip, tokenizer = tiny_clip(tmp_path)
    model = ProxyCLIP(clip, sd, VOCAB, vfm_kind="sd", tokenizer=tokenizer, short_side=64, slide_crop=64,
                      slide_stride=32)
    win = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    embeddings, grid = model.dense_embeddings(win)
    assert grid == tuple(sd(win).shape[-2:]) == (4, 4) and embeddings.shape[:2] == (2, 16)
    rgb = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    labels = model.predict(rgb)
    assert labels.shape == (50, 70) and 0 <= int(labels.min()) and int(labels.max()) < 3
    with pytest.raises(ValueError, match="attention='vfm'"):
        ProxyCLIP(clip, sd, VOCAB, vfm_kind="sd", attention="vfm", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="vfm_kind='sd' needs a Stable Diffusion VFM"):
        ProxyCLIP(clip, clip.visual, VOCAB, vfm_kind="sd", tokenizer=tokenizer)


def test_build_proxyclip_with_the_tiny_sd_spec(tmp_path):
    model = build_proxyclip(VOCAB, clip=str(write_tiny_clip_config(tmp_path)), clip_weights="random", vfm=SPEC,
                            vfm_weights="random", text_cache_dir=str(tmp_path / "cache"), short_side=64,
                            slide_crop=64, slide_stride=32)
    assert model.vfm_kind == "sd" and isinstance(model.vfm, StableDiffusionVFM)
    assert model.predict(np.zeros((40, 60, 3), np.uint8)).shape == (40, 60)


def test_sd_runs_on_another_device(sd):
    """The meta device stands in for a GPU: the draws and the prompt follow the weights."""
    import copy

    model = copy.deepcopy(sd).to("meta")
    assert model.prompt_embeds.device.type == "meta"
    assert model(torch.rand(1, 3, 48, 80, device="meta")).device.type == "meta"


# ------------------------------------------------------------------------------------------ the command
def _miniature(tmp_path):
    from datamodules.synthetic import make_fake_benchmark

    make_fake_benchmark("voc21", tmp_path / "data", 3, sizes=((60, 80), (50, 70)))
    return ["--data", "voc21", "--data-root", str(tmp_path / "data"), "--clip", str(write_tiny_clip_config(tmp_path)),
            "--clip-weights", "random", "--vfm", SPEC, "--vfm-weights", "random", "--accelerator", "cpu",
            "--num-workers", "0", "--text-cache-dir", str(tmp_path / "cache")]


@pytest.mark.slow
def test_test_script_runs_the_tiny_sd_and_records_its_kind(tmp_path):
    from script_runs import run_test_script

    r = run_test_script([*_miniature(tmp_path), "--output-dir", str(tmp_path / "out")])
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["num_images"] == 3 and res["config"]["vfm_kind"] == "sd" and res["config"]["vfm"] == SPEC
    bad = run_test_script([*_miniature(tmp_path / "bad"), "--attention", "vfm", "--output-dir", str(tmp_path / "b")])
    assert bad.returncode == 2 and "attention='vfm'" in bad.stderr.strip().splitlines()[-1], bad.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.ddp
def test_one_and_two_processes_give_identical_results_with_sd(tmp_path):
    from script_runs import run_test_script

    flags = _miniature(tmp_path)
    out = {}
    for devices in (1, 2):
        r = run_test_script([*flags, "--devices", str(devices), "--output-dir", str(tmp_path / f"out{devices}")])
        assert r.returncode == 0, r.stderr[-3000:]
        out[devices] = json.loads((tmp_path / f"out{devices}" / "results.json").read_text())
        assert out[devices]["config"]["world_size"] == devices
    for field in ("mIoU", "aAcc", "mAcc", "per_class_iou", "per_class_acc"):
        assert out[1][field] == out[2][field], field


# ------------------------------------------------------------------------------------------ GPU (pytest -m gpu)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_features_equal_cpu_features_and_autocast_runs(sd):
    """The draws are made on the CPU, so CUDA gives the CPU's features (full fp32: TF32 off)."""
    import copy

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cuda = copy.deepcopy(sd).to("cuda")
    batch = torch.cat(windows(((48, 80),) * 3))
    cpu = sd(batch)
    got = cuda(batch.cuda())
    assert got.device.type == "cuda" and (got.cpu() - cpu).abs().max().item() <= bound(cpu)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        mixed = cuda(batch.cuda())
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed).all()


def test_resume_identity_of_pretrained_sd_includes_the_noise_seed():
    from proxyclip_pl.commands.evaluate import parse_args
    from proxyclip_pl.commands.run_record import tower_identities

    def identity(*flags):
        return tower_identities(parse_args(["--data", "voc21", "--vfm", "sd-2-1", *flags]))["vfm_weights_id"]

    # the draws change SD's features even with fixed weights: another --seed is another configuration
    assert identity("--seed", "0") != identity("--seed", "1")
    assert identity("--seed", "3") == identity("--seed", "3")


def test_the_sd_recipe_leaves_the_input_transform_to_the_model():
    """The model stretches and maps to ``2 x - 1`` itself: the recipe's input is the [0, 1] window unchanged."""
    from proxyclip_pl.vfm import vfm_input

    windows = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    assert torch.equal(vfm_input(windows, "sd", 336), windows)
