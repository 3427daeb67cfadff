"""Model factories: names, weight sources (tag / local file / random), offline failures."""
from __future__ import annotations

import time

import pytest
import torch

from proxyclip_pl import WeightsNotFoundError, build_clip, build_vfm
from proxyclip_pl.towers import vfm_kind_for
from tiny_models import TINY_VFMS, tiny_clip, write_tiny_clip_config


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_vfm_kinds_from_names():
    assert vfm_kind_for("vit_base_patch8_224.dino") == "dino"
    assert vfm_kind_for("vit_base_patch14_reg4_dinov2.lvd142m") == "dinov2"
    assert vfm_kind_for("samvit_base_patch16.sa1b") == "sam"
    assert vfm_kind_for("vit_base_patch16_224.mae") == "mae"
    assert vfm_kind_for("vit_small_patch16_224.augreg_in21k") == "dino"


def test_random_init_is_seeded_and_leaves_global_rng_alone(tmp_path):
    name, kwargs = TINY_VFMS["dino"]
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, _ = build_vfm(name, "random", seed=0, **kwargs)
    after = torch.rand(1)
    b, _ = build_vfm(name, "random", seed=0, **kwargs)
    c, _ = build_vfm(name, "random", seed=1, **kwargs)
    assert torch.equal(before, after)
    assert _same_weights(a, b) and not _same_weights(a, c)
    assert _same_weights(tiny_clip(tmp_path)[0], tiny_clip(tmp_path)[0])


def test_local_checkpoints_round_trip(tmp_path):
    name, kwargs = TINY_VFMS["dino"]
    vfm, _ = build_vfm(name, "random", seed=3, **kwargs)
    torch.save(vfm.state_dict(), tmp_path / "vfm.pth")
    loaded, kind = build_vfm(name, str(tmp_path / "vfm.pth"), **kwargs)
    assert kind == "dino" and _same_weights(vfm, loaded)

    clip, _ = tiny_clip(tmp_path, seed=3)
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    loaded_clip, _ = build_clip(str(write_tiny_clip_config(tmp_path)), str(tmp_path / "clip.pt"))
    assert _same_weights(clip, loaded_clip)


@pytest.mark.parametrize(
    "call,exc,message",
    [
        (lambda: build_clip("ViT-Nope-99", "random"), ValueError, "unknown CLIP model 'ViT-Nope-99'"),
        (lambda: build_clip("missing.json", "random"), FileNotFoundError, "missing.json"),
        (lambda: build_clip("ViT-B-16-quickgelu", "/nowhere/clip.pt"), WeightsNotFoundError, "/nowhere/clip.pt"),
        (lambda: build_clip("ViT-B-16-quickgelu", "no-such-tag"), ValueError, "unknown pretrained tag 'no-such-tag'"),
        (lambda: build_vfm("vit_nope_patch3", "random"), ValueError, "unknown timm VFM 'vit_nope_patch3'"),
        (lambda: build_vfm("vit_small_patch8_224.dino", "/nowhere/dino.pth"), WeightsNotFoundError, "/nowhere/dino.pth"),
        (lambda: build_vfm("vit_small_patch8_224.dino", "dino"), ValueError, "must be 'pretrained', 'random' or a checkpoint path"),
    ],
)
def test_bad_names_and_missing_files_fail_with_message(call, exc, message):
    with pytest.raises(exc, match=message.replace("(", r"\(")):
        call()


def test_uncached_pretrained_weights_fail_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError, match="timm/vit_small_patch8_224.dino"):
        build_vfm("vit_small_patch8_224.dino", "pretrained")
    with pytest.raises(WeightsNotFoundError, match=r"timm/vit_base_patch16_clip_224\.openai"):
        build_clip("ViT-B-16-quickgelu", "openai", cache_dir=str(tmp_path))
    assert time.monotonic() - start < 60


def test_build_proxyclip_frees_the_text_tower_after_encoding(tmp_path):
    from proxyclip_pl import build_proxyclip
    from tiny_models import write_tiny_vfm_spec

    kwargs = dict(clip=str(write_tiny_clip_config(tmp_path)), clip_weights="random",
                  vfm=str(write_tiny_vfm_spec(tmp_path)), vfm_weights="random", text_cache_dir=False)
    lean = build_proxyclip([["cat"], ["dog"]], **kwargs)
    full = build_proxyclip([["cat"], ["dog"]], keep_text_tower=True, **kwargs)
    assert lean.clip.transformer is None and lean.clip.token_embedding is None
    assert full.clip.transformer is not None
    assert torch.equal(lean.text_embeddings, full.text_embeddings)
    x = torch.rand(1, 3, 112, 112)
    assert torch.equal(lean.window_logits(x), full.window_logits(x))
