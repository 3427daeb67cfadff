"""Text embeddings are cached per (model, weights, vocabulary) and reused."""
from __future__ import annotations

import torch

import proxyclip_pl.text_cache as text_cache
from proxyclip_pl import build_proxyclip
from tiny_models import write_tiny_clip_config, write_tiny_vfm_spec


def test_cache_hit_skips_encoding_and_key_tracks_inputs(tmp_path, monkeypatch):
    clip_cfg, vfm_spec = str(write_tiny_clip_config(tmp_path)), str(write_tiny_vfm_spec(tmp_path))
    kwargs = dict(clip=clip_cfg, clip_weights="random", vfm=vfm_spec, vfm_weights="random", text_cache_dir=tmp_path / "c")
    first = build_proxyclip([["cat"], ["dog"]], **kwargs)
    assert len(list((tmp_path / "c").glob("*.pt"))) == 1

    calls = []
    real = text_cache.encode_text_embeddings
    monkeypatch.setattr(text_cache, "encode_text_embeddings", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = build_proxyclip([["cat"], ["dog"]], **kwargs)
    assert calls == [] and torch.equal(first.text_embeddings, again.text_embeddings)

    build_proxyclip([["cat"], ["dog", "puppy"]], **kwargs)  # new vocabulary
    build_proxyclip([["cat"], ["dog"]], **{**kwargs, "seed": 1})  # new random weights
    assert len(calls) == 2 and len(list((tmp_path / "c").glob("*.pt"))) == 3
    uncached = build_proxyclip([["cat"], ["dog"]], **{**kwargs, "text_cache_dir": False})
    assert torch.allclose(uncached.text_embeddings, first.text_embeddings, atol=1e-6)
