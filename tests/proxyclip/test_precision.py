"""Mixed precision: encoders may run in bf16, the attention statistics and the cosine logits do not."""
from __future__ import annotations

import copy

import pytest
import torch

from proxyclip_pl import ProxyCLIP
from proxyclip_pl.proxy_attention import cosine_similarity_matrix, proxy_attention
from tiny_models import tiny_clip, tiny_vfm


def test_similarity_statistics_stay_fp32_under_autocast():
    f = torch.randn(2, 300, 24, generator=torch.Generator().manual_seed(0))
    plain = cosine_similarity_matrix(f)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = cosine_similarity_matrix(f)
        attn = proxy_attention(f)
    assert auto.dtype == torch.float32 and torch.equal(auto, plain)
    assert attn.dtype == torch.float32 and torch.equal(attn, proxy_attention(f))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    clip, tok = tiny_clip(tmp_path_factory.mktemp("p"))
    return ProxyCLIP(clip, tiny_vfm("dino"), [["a"], ["b", "c"], ["d"]], tokenizer=tok)


def test_bf16_autocast_logits_are_fp32_and_close(model):
    x = torch.rand(2, 3, 224, 336, generator=torch.Generator().manual_seed(1))
    ref = model.window_logits(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model.window_logits(x)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert (got - ref).abs().max() < 0.05  # bf16 has ~3 significant digits; cosines lie in [-1, 1]


def test_half_weights_run_and_return_fp32(model):
    half = copy.deepcopy(model).to(torch.bfloat16)
    half.text_embeddings = model.text_embeddings.clone()  # the classifier stays fp32
    x = torch.rand(1, 3, 112, 112, generator=torch.Generator().manual_seed(2))
    out = half.window_logits(x)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
