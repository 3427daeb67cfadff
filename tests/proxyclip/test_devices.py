"""Device placement: every public path runs with the model on a device that is not the CPU.

The ``meta`` device stands in for a GPU: any tensor that stays on the CPU while the weights moved
raises "Tensor on device cpu is not on the expected device meta", exactly where CUDA would raise.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from proxyclip_pl import build_proxyclip
from tiny_models import write_tiny_clip_config, write_tiny_vfm_spec

VOCAB = [["sky", "cloud"], ["cat"], ["dog", "puppy"]]
META = torch.device("meta")


def assert_all_on(model: torch.nn.Module, device: torch.device) -> None:
    behind = [name for name, t in itertools.chain(model.named_parameters(), model.named_buffers())
              if t.device.type != device.type]
    assert not behind, f"left on another device: {behind[:5]}"
    assert model.device.type == device.type


@pytest.fixture(scope="module")
def flags(tmp_path_factory):
    d = tmp_path_factory.mktemp("devices")
    return {"clip": str(write_tiny_clip_config(d)), "clip_weights": "random",
            "vfm": str(write_tiny_vfm_spec(d)), "vfm_weights": "random", "text_cache_dir": str(d / "cache")}


def check_public_paths(model) -> None:
    """predict, window_logits and slide_logits on ``model``'s device, outputs there too."""
    windows = torch.rand(2, 3, 112, 168)
    assert model.window_logits(windows).device.type == model.device.type
    assert model.window_logits(windows).shape == (2, len(model.queries), 112, 168)
    assert model.slide_logits(torch.rand(1, 3, 112, 200)).device.type == model.device.type
    labels = model.predict(np.zeros((90, 130, 3), np.uint8))
    assert labels.shape == (90, 130) and labels.dtype == torch.long and labels.device.type == model.device.type


@pytest.mark.parametrize("attention", [pytest.param("proxy", marks=pytest.mark.slow), "vfm", "maskclip"])
def test_build_proxyclip_places_everything_on_the_device(flags, attention):
    kwargs = dict(flags, attention=attention, short_side=112, slide_crop=112, slide_stride=56)
    build_proxyclip(VOCAB, **kwargs)  # warms the text cache: it loads to the CPU, as on a GPU machine
    model = build_proxyclip(VOCAB, device="meta", **kwargs)
    assert_all_on(model, META)
    check_public_paths(model)


def test_a_model_built_from_towers_on_a_device_keeps_its_buffers_there(flags):
    """The constructor puts CPU text embeddings (a cache, a file) next to the towers' weights."""
    from proxyclip_pl import ProxyCLIP, build_clip, build_vfm

    clip, tokenizer = build_clip(flags["clip"], "random")
    vfm, kind = build_vfm(flags["vfm"], "random")
    embeddings = torch.randn(sum(map(len, VOCAB)), clip.text_projection.shape[1])
    model = ProxyCLIP(clip.to(META), vfm.to(META), VOCAB, vfm_kind=kind, text_embeddings=embeddings,
                      short_side=112, slide_crop=112, slide_stride=56)
    assert_all_on(model, META)
    check_public_paths(model)
    assert_all_on(model.to_empty(device="cpu"), torch.device("cpu"))  # everything it owns moves


@pytest.mark.slow
def test_segment_script_builds_on_the_requested_device(flags, monkeypatch, tmp_path):
    import proxyclip_pl
    from proxyclip_pl.commands import segment

    built = {}

    class Built(Exception):
        pass

    def capture(vocabulary, **kwargs):
        cpu_kwargs = dict(kwargs, device="cpu")
        real(vocabulary, text_cache_dir=flags["text_cache_dir"], **cpu_kwargs)  # warm cache, as on a GPU machine
        built["model"] = real(vocabulary, text_cache_dir=flags["text_cache_dir"], **kwargs)
        raise Built

    real = proxyclip_pl.build_proxyclip
    monkeypatch.setattr(proxyclip_pl, "build_proxyclip", capture)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(image)
    argv = [str(image), "--classes", "cat", "dog", "--out", str(tmp_path / "o.png"), "--device", "meta",
            "--short-side", "112", "--crop", "112", "--stride", "56",
            "--clip", flags["clip"], "--clip-weights", "random", "--vfm", flags["vfm"], "--vfm-weights", "random"]
    with pytest.raises(Built):
        segment.main(argv)
    assert_all_on(built["model"], META)
    check_public_paths(built["model"])


@pytest.mark.slow
def test_benchmark_script_builds_on_the_requested_device(flags):
    from proxyclip_pl.commands import benchmark

    argv = ["--clip", flags["clip"], "--clip-weights", "random", "--vfm", flags["vfm"], "--vfm-weights", "random",
            "--short-side", "112", "--crop", "112", "--stride", "56"]
    vocabulary, _ = benchmark.resolve_vocabulary(None)
    cpu_args = benchmark.parse_args(["--device", "cpu", *argv])
    benchmark.build_model(cpu_args, benchmark.resolve_settings(cpu_args), vocabulary)  # warm cache
    args = benchmark.parse_args(["--device", "meta", *argv])
    model = benchmark.build_model(args, benchmark.resolve_settings(args), vocabulary)
    assert_all_on(model, META)
    check_public_paths(model)


def test_device_default_follows_the_weights_after_to(flags):
    model = build_proxyclip(VOCAB, **flags)
    assert model.effective_window_batch_size == 1  # CPU default
    moved = model.to(META)
    assert moved.device == META and moved.text_embeddings.device == META and moved.query_to_class.device == META
