"""Text encoding truncated after the pooled (EOT) token equals open_clip's full-length ``encode_text``."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from proxyclip_pl.text_encoder import (encode_tokens, pooled_positions, token_budget_batches,
                                       truncated_encode_text, truncation_unsupported_reason)
from proxyclip_pl.vocabulary import TEMPLATES, encode_text_embeddings, flatten_vocabulary
from tiny_models import TINY_CLIP_CONFIG, tiny_clip

CONTEXT = 77
# Prompt lengths from 6 tokens ("a photo of a a.") to the full 77 (the last name is cut at the context
# length: its EOT token is the tokenizer's forced last token), and classes of several synonyms.
LONG_NAME = " ".join(["extraordinarily long compound class name"] * 4)
VERY_LONG_NAME = " ".join(["word"] * 90)
VOCAB = [["a"], ["cat", "kitten", "domestic cat"], [LONG_NAME], ["traffic light"], ["b", VERY_LONG_NAME], ["sky"]]
QUERIES = flatten_vocabulary(VOCAB)[0]
# A subset of templates keeps the tests fast while still mixing short and long templates.
FEW_TEMPLATES = TEMPLATES[:3] + TEMPLATES[40:43] + TEMPLATES[-2:]


@pytest.fixture(scope="module")
def clip_and_tokenizer(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@torch.no_grad()
def reference_embeddings(model, tokenizer, queries, templates, batch_size):
    """The encoding procedure before truncation, literally: full-length ``encode_text`` in prompt order."""
    prompts = [template(query) for query in queries for template in templates]
    chunks = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[start:start + batch_size])
        chunks.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    per_prompt = torch.cat(chunks).view(len(queries), len(templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)


def count_positions(module: nn.Module):
    """Forward pre-hook on ``module`` recording the sequence length of every input it sees."""
    lengths: list[int] = []

    def hook(_module, args, kwargs):
        x = args[0] if args else kwargs["x"]
        lengths.append(x.shape[1])  # open_clip's Transformer always receives NLD

    return lengths, module.register_forward_pre_hook(hook, with_kwargs=True)


def test_prompt_lengths_cover_short_long_and_full_context(clip_and_tokenizer):
    model, tokenizer = clip_and_tokenizer
    tokens = tokenizer([t(q) for q in QUERIES for t in FEW_TEMPLATES])
    lengths = pooled_positions(model, tokens) + 1
    assert int(lengths.min()) <= 7 and int(lengths.max()) == CONTEXT
    assert len(set(lengths.tolist())) >= 8


@pytest.mark.parametrize("batch_size", [1, 3, 16, 256])
def test_truncated_embeddings_equal_full_length_fp32(clip_and_tokenizer, batch_size):
    model, tokenizer = clip_and_tokenizer
    expected = reference_embeddings(model, tokenizer, QUERIES, FEW_TEMPLATES, batch_size)
    got = encode_text_embeddings(model, tokenizer, QUERIES, FEW_TEMPLATES, batch_size=batch_size)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-6
    # the full-length path (truncate=False) is today's procedure, batch for batch
    full = encode_text_embeddings(model, tokenizer, QUERIES, FEW_TEMPLATES, batch_size=batch_size, truncate=False)
    assert torch.equal(full, expected)


def test_all_80_templates_equal_full_length(clip_and_tokenizer):
    model, tokenizer = clip_and_tokenizer
    queries = ["cat", LONG_NAME, "traffic light"]
    expected = reference_embeddings(model, tokenizer, queries, TEMPLATES, 16)
    got = encode_text_embeddings(model, tokenizer, queries, batch_size=16)
    assert (got - expected).abs().max().item() <= 1e-6


def test_truncated_features_equal_full_length_fp64(tmp_path):
    model, tokenizer = tiny_clip(tmp_path)
    model = model.double()
    tokens = tokenizer([t(q) for q in QUERIES for t in FEW_TEMPLATES])
    positions = pooled_positions(model, tokens)
    expected = model.encode_text(tokens)
    assert expected.dtype == torch.float64
    # one batch holding every length, batches of similar lengths, and one prompt per batch
    got = truncated_encode_text(model, tokens, positions)
    assert (got - expected).abs().max().item() <= 1e-12
    order = torch.argsort(positions, stable=True)
    for batch in token_budget_batches(positions[order] + 1, 4 * CONTEXT, order):
        got = truncated_encode_text(model, tokens[batch], positions[batch])
        assert (got - expected[batch]).abs().max().item() <= 1e-12
    for i in (0, int(positions.argmax())):
        got = encode_tokens(model, tokens[i:i + 1])
        assert (got - expected[i:i + 1]).abs().max().item() <= 1e-12


def test_each_batch_runs_only_to_its_longest_eot(clip_and_tokenizer):
    model, tokenizer = clip_and_tokenizer
    queries = ["cat", "dog", "traffic light", "sky"]
    tokens = tokenizer([t(q) for q in queries for t in TEMPLATES])
    eot = (tokens.argmax(dim=-1) + 1).sort().values
    lengths, handle = count_positions(model.transformer)
    try:
        encode_text_embeddings(model, tokenizer, queries, batch_size=16)
    finally:
        handle.remove()
    expected_batches = token_budget_batches(eot, 16 * CONTEXT)
    assert lengths == [int(eot[b].max()) for b in expected_batches]
    assert max(lengths) == int(eot.max()) < 20
    # far fewer positions than the 77 per prompt of the full-length forward
    seen = sum(len(b) * n for b, n in zip(expected_batches, lengths))
    assert seen <= len(tokens) * int(eot.max()) < len(tokens) * CONTEXT / 4
    lengths, handle = count_positions(model.transformer)
    try:
        encode_text_embeddings(model, tokenizer, queries, batch_size=16, truncate=False)
    finally:
        handle.remove()
    assert lengths == [CONTEXT] * (len(tokens) // 16)


def test_token_budget_batches_cover_every_prompt_within_budget():
    lengths = torch.tensor([3, 3, 4, 5, 5, 5, 9, 30, 77])
    index = torch.arange(100, 109)
    batches = token_budget_batches(lengths, 20, index)
    assert torch.equal(torch.cat(batches), index)
    for batch in batches:
        n = lengths[batch - 100]
        assert len(batch) == 1 or len(batch) * int(n.max()) <= 20
    assert [len(b) for b in batches] == [4, 2, 1, 1, 1]  # 3,3,4,5 (4 x 5 = 20) | 5,5 (3 x 9 > 20) | 9 | 30 | 77
    with pytest.raises(ValueError):
        token_budget_batches(torch.tensor([5, 3]), 20)


@pytest.mark.parametrize("pool_type", ["argmax", "eos", "first"])
def test_pool_types_that_truncate(tmp_path, pool_type):
    model, tokenizer = tiny_clip(tmp_path)
    model.text_pool_type = pool_type
    model.text_eos_id = tokenizer.eot_token_id if pool_type == "eos" else None
    assert truncation_unsupported_reason(model) is None
    tokens = tokenizer([t(q) for q in QUERIES for t in FEW_TEMPLATES])
    positions = pooled_positions(model, tokens)
    if pool_type == "first":
        assert int(positions.max()) == 0
    else:
        assert torch.equal(positions, tokens.argmax(dim=-1))
    lengths, handle = count_positions(model.transformer)
    try:
        got = encode_tokens(model, tokens)
    finally:
        handle.remove()
    assert lengths == [int(positions.max()) + 1]
    assert (got - model.encode_text(tokens)).abs().max().item() <= 1e-6


def test_linear_text_projection(tmp_path):
    model, tokenizer = tiny_clip(tmp_path)
    width = model.text_projection.shape[0]
    torch.manual_seed(0)
    del model.text_projection  # a registered Parameter cannot be replaced by a module in place
    model.text_projection = nn.Linear(width, TINY_CLIP_CONFIG["embed_dim"])
    assert truncation_unsupported_reason(model) is None
    expected = reference_embeddings(model, tokenizer, QUERIES, FEW_TEMPLATES, 16)
    got = encode_text_embeddings(model, tokenizer, QUERIES, FEW_TEMPLATES, batch_size=16)
    assert (got - expected).abs().max().item() <= 1e-6


def _custom_text_clip():
    from open_clip.model import CustomTextCLIP

    torch.manual_seed(0)
    return CustomTextCLIP(TINY_CLIP_CONFIG["embed_dim"], TINY_CLIP_CONFIG["vision_cfg"],
                          TINY_CLIP_CONFIG["text_cfg"], quick_gelu=True).eval()


def _pool_last(model):
    model.text_pool_type = "last"
    return model


def _no_mask(model):
    model.attn_mask = None
    return model


def _full_mask(model):
    model.attn_mask = torch.zeros_like(model.attn_mask)  # bidirectional: later tokens change the EOT output
    return model


@pytest.mark.parametrize("variant", ["custom_text_clip", "pool_last", "no_mask", "bidirectional_mask", "override"])
def test_fallback_runs_full_length_encode_text(tmp_path, variant):
    open_clip = pytest.importorskip("open_clip")
    if variant == "custom_text_clip":
        model, tokenizer = _custom_text_clip(), open_clip.get_tokenizer("ViT-B-16")
        transformer = model.text.transformer
    else:
        model, tokenizer = tiny_clip(tmp_path)
        if variant == "override":
            class Overriding(type(model)):
                def encode_text(self, text, normalize: bool = False):
                    return super().encode_text(text, normalize) * 2.0

            model.__class__ = Overriding
        else:
            model = {"pool_last": _pool_last, "no_mask": _no_mask, "bidirectional_mask": _full_mask}[variant](model)
        transformer = model.transformer
    assert truncation_unsupported_reason(model) is not None
    calls = []
    original = model.encode_text

    def spy(text, *args, **kwargs):
        calls.append(tuple(text.shape))
        return original(text, *args, **kwargs)

    model.encode_text = spy
    lengths, handle = count_positions(transformer)
    try:
        got = encode_text_embeddings(model, tokenizer, QUERIES, FEW_TEMPLATES, batch_size=5)
    finally:
        handle.remove()
    num_prompts = len(QUERIES) * len(FEW_TEMPLATES)
    assert [c[0] for c in calls] == [5] * (num_prompts // 5) + ([num_prompts % 5] if num_prompts % 5 else [])
    assert all(c[1] == CONTEXT for c in calls) and set(lengths) == {CONTEXT}
    expected = reference_embeddings(model, tokenizer, QUERIES, FEW_TEMPLATES, 5)
    assert torch.equal(got, expected)
    calls.clear()
    encode_tokens(model, tokenizer(["a photo of a cat."]))
    assert calls == [(1, CONTEXT)]


def test_rejects_bad_batch_size_and_empty_queries(clip_and_tokenizer):
    model, tokenizer = clip_and_tokenizer
    with pytest.raises(ValueError):
        encode_text_embeddings(model, tokenizer, ["cat"], batch_size=-1)
    with pytest.raises(ValueError):
        encode_text_embeddings(model, tokenizer, [])
