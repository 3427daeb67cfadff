"""Text embeddings are cached per (model, weights, vocabulary) and reused."""
from __future__ import annotations

import os

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


def _same_size_checkpoints(tmp_path):
    """Two different tiny CLIP checkpoints of identical size."""
    from tiny_models import tiny_clip

    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(tiny_clip(tmp_path, seed=1)[0].state_dict(), a)
    torch.save(tiny_clip(tmp_path, seed=2)[0].state_dict(), b)
    assert a.stat().st_size == b.stat().st_size and a.read_bytes() != b.read_bytes()
    return a, b


def _replace_keeping_size_and_mtime(src, dst):
    """What ``cp -p`` / ``rsync -a`` of a same-size file does: new content, the old path, the old mtime."""
    st = dst.stat()
    dst.write_bytes(src.read_bytes())
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert dst.stat().st_size == st.st_size and dst.stat().st_mtime_ns == st.st_mtime_ns


def test_same_size_same_mtime_replacement_is_a_different_key(tmp_path):
    a, b = _same_size_checkpoints(tmp_path)
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(a.read_bytes())
    before = text_cache.weights_identity(str(ckpt), 0)
    _replace_keeping_size_and_mtime(b, ckpt)
    after = text_cache.weights_identity(str(ckpt), 0)
    assert before != after
    # The identity is the content: the same bytes elsewhere share it.
    assert after == text_cache.weights_identity(str(b), 0) and before == text_cache.weights_identity(str(a), 0)


def test_same_size_same_mtime_replacement_is_not_served_stale_embeddings(tmp_path):
    a, b = _same_size_checkpoints(tmp_path)
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(a.read_bytes())
    kwargs = dict(clip=str(write_tiny_clip_config(tmp_path)), clip_weights=str(ckpt),
                  vfm=str(write_tiny_vfm_spec(tmp_path)), vfm_weights="random", text_cache_dir=tmp_path / "c")
    first = build_proxyclip([["cat"], ["dog"]], **kwargs).text_embeddings
    _replace_keeping_size_and_mtime(b, ckpt)
    second = build_proxyclip([["cat"], ["dog"]], **kwargs).text_embeddings
    uncached = build_proxyclip([["cat"], ["dog"]], **{**kwargs, "text_cache_dir": False}).text_embeddings
    assert not torch.allclose(first, second)
    assert torch.allclose(second, uncached, atol=1e-6)


def test_checkpoint_is_hashed_once_per_process(tmp_path, monkeypatch):
    a, _ = _same_size_checkpoints(tmp_path)
    reads = []
    real = text_cache._sha256_of_file
    monkeypatch.setattr(text_cache, "_sha256_of_file", lambda p: reads.append(p) or real(p))
    first = text_cache.weights_identity(str(a), 0)
    assert text_cache.weights_identity(str(a), 0) == first and len(reads) <= 1


def test_embedding_version_is_part_of_the_key(tmp_path, monkeypatch):
    kwargs = dict(clip=str(write_tiny_clip_config(tmp_path)), clip_weights="random",
                  vfm=str(write_tiny_vfm_spec(tmp_path)), vfm_weights="random", text_cache_dir=tmp_path / "c")
    build_proxyclip([["cat"], ["dog"]], **kwargs)
    calls = []
    real = text_cache.encode_text_embeddings
    monkeypatch.setattr(text_cache, "encode_text_embeddings", lambda *a, **k: calls.append(1) or real(*a, **k))
    build_proxyclip([["cat"], ["dog"]], **kwargs)
    assert calls == []  # same procedure: a hit
    monkeypatch.setattr(text_cache, "EMBEDDING_VERSION", text_cache.EMBEDDING_VERSION + 1)
    build_proxyclip([["cat"], ["dog"]], **kwargs)
    assert calls == [1]  # a new procedure version misses the old entry
    assert len(list((tmp_path / "c").glob("*.pt"))) == 2
