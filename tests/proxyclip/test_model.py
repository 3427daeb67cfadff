"""ProxyCLIP against a direct, unbatched transcription of the method, plus batching and robustness.

The per-window math (CLIP values, DINO features, proxy attention, projection) is transcribed here; the
window loop and the post-processing come from the package's one plain reference,
:mod:`proxyclip_pl.reference`. See docs/method_notes.md ('CLIP forward up to the last block', 'Last block
and value embeddings', 'Proxy attention', 'Per-window logits', 'Sliding window', 'Post-processing').
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from proxyclip_pl import ProxyCLIP
from proxyclip_pl.postprocess import logits_to_labels
from proxyclip_pl.reference import onehot_postprocess, slide_window_logits
from proxyclip_pl.vfm import vfm_features
from tiny_models import TINY_VFMS, tiny_clip, tiny_vfm

CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073], dtype=torch.float64).view(3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711], dtype=torch.float64).view(3, 1, 1)
INET_MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(3, 1, 1)
INET_STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(3, 1, 1)
VOCAB = [["sky", "cloud"], ["cat"], ["dog", "puppy", "hound"], ["grass"]]


# ------------------------------------------------------------------------- per-window reference (unbatched)
def ref_dino_pos(pos: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """The DINO positional-embedding rule (scale factor with +0.1) for a [1 + s*s, D] table
    (docs/method_notes.md, 'Positional embeddings')."""
    side = int(math.sqrt(pos.shape[0] - 1))
    if (gh, gw) == (side, side):
        return pos
    grid = pos[1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((gh + 0.1) / side, (gw + 0.1) / side), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1].float(), grid.permute(0, 2, 3, 1).reshape(gh * gw, -1)]).to(pos.dtype)


def ref_clip_values(visual, window: torch.Tensor):
    """Values V [D, gh, gw] of ln_1 of the tokens entering the last block
    (docs/method_notes.md, 'CLIP forward up to the last block' and 'Last block and value embeddings')."""
    x = ((window - CLIP_MEAN.to(window)) / CLIP_STD.to(window))[None]
    x = visual.conv1(x)
    width, gh, gw = x.shape[1:]
    x = x.reshape(1, width, gh * gw).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding.view(1, 1, -1), x], dim=1)
    x = x + ref_dino_pos(visual.positional_embedding, gh, gw)
    x = visual.ln_pre(x)
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)
    last = visual.transformer.resblocks[-1]
    u = last.ln_1(x)[0]
    v = u @ last.attn.in_proj_weight[2 * width:3 * width].T + last.attn.in_proj_bias[2 * width:3 * width]
    return v[1:].T.reshape(width, gh, gw)


def ref_dino_tokens(vfm, window: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """DINO v1 tokens [1, 1 + H*W, C] entering the blocks (CLS first) and the grid (H, W)."""
    x = ((window - INET_MEAN.to(window)) / INET_STD.to(window))[None]
    x = vfm.patch_embed.proj(x)
    c, h, w = x.shape[1:]
    x = x.reshape(1, c, h * w).permute(0, 2, 1)
    return torch.cat([vfm.cls_token, x], dim=1) + ref_dino_pos(vfm.pos_embed[0], h, w), (h, w)


def ref_dino_features(vfm, window: torch.Tensor) -> torch.Tensor:
    """DINO v1 features [C, H, W]: last block, final norm, CLS dropped (docs/method_notes.md, 'VFM features')."""
    x, (h, w) = ref_dino_tokens(vfm, window)
    for block in vfm.blocks:
        x = block(x)
    return vfm.norm(x)[0, 1:].T.reshape(-1, h, w)


def ref_dino_raw_attention(vfm, window: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """The raw-VFM-attention ablation's attention, literally: the last DINO block's own softmax(q k^T / sqrt(d))
    per head among the patch tokens only (CLS key and query dropped, rows renormalised by the softmax),
    averaged over the heads. Returns [H*W, H*W] (rows sum to 1) and the grid (H, W)."""
    x, grid = ref_dino_tokens(vfm, window)
    for block in vfm.blocks[:-1]:
        x = block(x)
    last = vfm.blocks[-1]
    u = last.norm1(x)[0, 1:]  # [N, C], patch tokens only
    width = u.shape[-1]
    heads = last.attn.num_heads
    dim = width // heads
    qkv = u @ last.attn.qkv.weight.T + last.attn.qkv.bias  # [N, 3C]: q | k | v, each head a block of dim
    per_head = []
    for head in range(heads):
        q = qkv[:, head * dim:(head + 1) * dim]
        k = qkv[:, width + head * dim:width + (head + 1) * dim]
        per_head.append(torch.softmax(q @ k.T / math.sqrt(dim), dim=-1))
    return torch.stack(per_head).mean(dim=0), grid


def ref_proxy_attention(model: ProxyCLIP, features: torch.Tensor) -> torch.Tensor:
    """Proxy attention [N, N] from VFM features [C, H, W] (docs/method_notes.md, 'Proxy attention')."""
    c, h, w = features.shape
    f = features.reshape(c, h * w)
    f = f / f.norm(dim=0, keepdim=True)
    s = f.T @ f
    a = model.gamma * (s - model.beta * s.mean())
    a[a < 0] = float("-inf")
    return torch.softmax(a, dim=-1)


def ref_logits_from_attention(model: ProxyCLIP, window: torch.Tensor, attention: torch.Tensor,
                              grid: tuple[int, int]) -> torch.Tensor:
    """CLIP values resized to ``grid``, re-aggregated by ``attention`` [N, N], projected, cosine against the
    text embeddings, upsampled to the window: [Q, h, w] (docs/method_notes.md, 'Last block and value
    embeddings' and 'Per-window logits')."""
    visual = model.clip.visual
    h, w = grid
    values = ref_clip_values(visual, window)
    values = F.interpolate(values[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    values = values.reshape(values.shape[0], h * w).T
    z = visual.transformer.resblocks[-1].attn.out_proj(attention.to(values.dtype) @ values)
    e = visual.ln_post(z) @ visual.proj
    e = e / e.norm(dim=-1, keepdim=True)
    logits = (e @ model.text_embeddings.T).T.reshape(-1, h, w)
    return F.interpolate(logits[None], size=window.shape[-2:], mode="bilinear", align_corners=False)[0]


def ref_window_logits(model: ProxyCLIP, window: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
    """One window [3, h, w] in [0, 1] -> [Q, h, w] with the proxy attention."""
    if features is None:
        features = ref_dino_features(model.vfm, window)
    return ref_logits_from_attention(model, window, ref_proxy_attention(model, features), tuple(features.shape[-2:]))


def ref_slide(model: ProxyCLIP, image: torch.Tensor, window_size: int, stride: int) -> torch.Tensor:
    """[3, H, W] -> [Q, H, W]: the plain window loop of :mod:`proxyclip_pl.reference` over :func:`ref_window_logits`."""
    return slide_window_logits(image, lambda window: ref_window_logits(model, window), len(model.queries),
                               window_size, stride)


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def clip_and_tokenizer(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def model(clip_and_tokenizer) -> ProxyCLIP:
    clip, tokenizer = clip_and_tokenizer
    return ProxyCLIP(clip, tiny_vfm("dino"), VOCAB, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def model64(model) -> ProxyCLIP:
    """The same model in float64, so rounding cannot move a key across the mask threshold."""
    import copy

    return copy.deepcopy(model).double()


def rand_windows(b: int, h: int, w: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed)).to(dtype)


# ---------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("h,w", [(336, 336), (224, 336), (336, 448), (112, 56)])
def test_window_logits_match_reference_float64(model64, h, w):
    x = rand_windows(2, h, w, dtype=torch.float64)
    got = model64.window_logits(x)
    assert got.shape == (2, len(model64.queries), h, w)
    for b in range(2):
        ref = ref_window_logits(model64, x[b])
        assert (got[b] - ref).abs().max() < 1e-10


@pytest.mark.parametrize("h,w", [(336, 336), (336, 448)])
def test_window_logits_match_reference_float32(model, h, w):
    x = rand_windows(2, h, w, seed=1)
    got = model.window_logits(x)
    for b in range(2):
        assert (got[b] - ref_window_logits(model, x[b])).abs().max() < 1e-5


def test_non_square_grid_is_height_by_width(model64):
    # A transposed window is a different image; a (W/p, H/p) mix-up shows as a mismatch against the
    # transposition-free reference on a strongly non-square window.
    x = rand_windows(1, 112, 336, seed=3, dtype=torch.float64)
    got = model64.window_logits(x)[0]
    assert (got - ref_window_logits(model64, x[0])).abs().max() < 1e-10
    feats = vfm_features(model64.vfm, "dino", x, 336)
    assert feats.shape[-2:] == (112 // 8, 336 // 8)


def test_slide_logits_match_reference(model64):
    image = rand_windows(1, 336, 560, seed=4, dtype=torch.float64)
    got = model64.slide_logits(image)[0]
    ref = ref_slide(model64, image[0], 336, 112)
    assert got.shape == ref.shape
    assert (got.double() - ref.double()).abs().max() < 1e-6  # float32 stitching buffer, as officially


# -------------------------------------------------------------------------------------- batching
def test_batched_windows_equal_single_windows(model64):
    x = rand_windows(5, 336, 336, seed=5, dtype=torch.float64)
    batched = model64.window_logits(x)
    single = torch.cat([model64.window_logits(x[i:i + 1]) for i in range(5)])
    assert (batched - single).abs().max() < 1e-12


def test_slide_logits_independent_of_window_batch_size(model64):
    image = rand_windows(1, 400, 620, seed=6, dtype=torch.float64)
    saved = model64.window_batch_size  # module-scoped model: restore it for the tests that follow
    try:
        model64.window_batch_size = 1
        one = model64.slide_logits(image)
        model64.window_batch_size = 7
        many = model64.slide_logits(image)
    finally:
        model64.window_batch_size = saved
    assert (one - many).abs().max() < 1e-6


def test_window_mean_is_per_window(model64):
    # A uniform window next to a textured one: with a batch-wide mean the textured window's mask changes.
    x = rand_windows(2, 224, 224, seed=7, dtype=torch.float64)
    x[0] = 0.5
    batched = model64.window_logits(x)
    assert (batched[1] - model64.window_logits(x[1:])[0]).abs().max() < 1e-12


# ------------------------------------------------------------------------------------ other VFMs
@pytest.mark.parametrize("kind", ["dinov2", "mae", "sam"])
def test_vfm_kinds_match_timm_reference(kind):
    import timm

    vfm = tiny_vfm(kind).double()
    x = rand_windows(1, 224 if kind != "mae" else 336, 336, seed=8, dtype=torch.float64)
    got = vfm_features(vfm, kind, x, 336)
    xn = (x - INET_MEAN.double()) / INET_STD.double()
    name, kwargs = TINY_VFMS[kind]
    if kind == "dinov2":
        # The hub DINOv2-reg interpolates by size with antialias, like timm's dynamic_img_size.
        ref_model = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True, **kwargs).double()
        ref_model.load_state_dict(vfm.state_dict())
        tokens = ref_model.forward_features(xn)[:, 5:]
        ref = tokens.transpose(1, 2).reshape(1, -1, 224 // 14, 336 // 14)
    elif kind == "mae":
        # Official: a window-size model whose checkpoint pos-embed was resized once, by size, no antialias.
        ref_model = timm.create_model(name, pretrained=False, num_classes=0, img_size=336, **kwargs).double()
        state = vfm.state_dict()
        grid = state["pos_embed"][0, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(21, 21), mode="bicubic", align_corners=False, antialias=False)
        state["pos_embed"] = torch.cat([state["pos_embed"][0, :1].float(), grid.permute(0, 2, 3, 1).reshape(441, -1)])[None].double()
        ref_model.load_state_dict(state)
        ref = ref_model.forward_features(xn)[:, 1:].transpose(1, 2).reshape(1, -1, 21, 21)
    else:
        ref = vfm.forward_features(F.interpolate(xn, size=(1024, 1024), mode="bilinear", align_corners=False))
        assert ref.shape[-2:] == (64, 64)
    assert got.shape == ref.shape
    assert (got - ref).abs().max() < 1e-9


@pytest.mark.parametrize("kind", ["dinov2", "sam"])
def test_other_vfm_window_logits_match_reference(model64, kind):
    vfm = tiny_vfm(kind).double()
    m = ProxyCLIP(model64.clip, vfm, VOCAB, vfm_kind=kind, text_embeddings=model64.text_embeddings).double()
    x = rand_windows(1, 224, 224, seed=9, dtype=torch.float64)
    feats = vfm_features(vfm, kind, x, 336)[0]
    ref = ref_window_logits(m, x[0], features=feats)
    assert (m.window_logits(x)[0] - ref).abs().max() < 1e-10


# ----------------------------------------------------------------------------------- predict path
def test_predict_equals_reference_pipeline(model):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(120, 200, 3), dtype=np.uint8)
    model.prob_thd = 0.3
    try:
        labels = model.predict(image)
        from datamodules.resize import resize_short_side

        resized = torch.from_numpy(resize_short_side(image, 336)).permute(2, 0, 1).float() / 255
        assert tuple(resized.shape[-2:]) == (336, 560)
        logits = ref_slide(model, resized, 336, 112)
        logits = F.interpolate(logits[None], size=(120, 200), mode="bilinear", align_corners=False)[0]
        ref = onehot_postprocess(logits, model.query_to_class, 40.0, 0.3)
        assert labels.dtype == torch.long and labels.shape == (120, 200)
        assert (labels == ref).float().mean() > 0.999
    finally:
        model.prob_thd = 0.0


def test_postprocess_matches_literal_softmax_onehot_max():
    g = torch.Generator().manual_seed(0)
    q2c = torch.tensor([0, 0, 0, 1, 2, 2, 3])
    logits = torch.randn(7, 30, 40, generator=g) * 0.05
    for thd in (0.0, 0.2, 0.35, 0.6):
        assert torch.equal(logits_to_labels(logits, q2c, 40.0, thd), onehot_postprocess(logits, q2c, 40.0, thd))
    # synonyms: the class of the best synonym wins even when another class has the larger *sum*
    logits = torch.zeros(7, 1, 1)
    logits[0:3, 0, 0] = torch.tensor([0.30, 0.30, 0.30])
    logits[3, 0, 0] = 0.31
    assert logits_to_labels(logits, q2c, 40.0, 0.0).item() == 1


# ------------------------------------------------------------------------------------- robustness
def test_uniform_image_gives_finite_logits_and_valid_labels(model):
    # A constant colour: every VFM similarity is 1, so every key would be masked without the guard.
    image = np.empty((150, 200, 3), dtype=np.uint8)
    image[:] = (200, 120, 40)
    resized = model.preprocess(image)
    logits = model.slide_logits(resized)
    assert torch.isfinite(logits).all()
    labels = model.predict(image)
    assert labels.shape == image.shape[:2]
    assert labels.min() >= 0 and labels.max() < len(VOCAB)


def test_guard_leaves_non_degenerate_rows_bit_identical():
    from proxyclip_pl.proxy_attention import proxy_attention_logits

    g = torch.Generator().manual_seed(0)
    f = F.normalize(torch.randn(2, 50, 8, generator=g), dim=-1)
    s = f @ f.transpose(1, 2)
    s[1] = 1.0  # window 1 fully degenerate (uniform image)
    guarded = proxy_attention_logits(s, 1.2, 3.0).softmax(-1)
    a = 3.0 * (s - 1.2 * s.mean(dim=(1, 2), keepdim=True))
    unguarded = a.masked_fill(a < 0, float("-inf")).softmax(-1)
    assert torch.isnan(unguarded[1]).all()
    assert torch.equal(guarded[0], unguarded[0])
    assert torch.allclose(guarded[1], torch.full((50, 50), 1 / 50))
    # beta large enough to mask whole rows of a textured window: only those rows fall back
    big = proxy_attention_logits(s[:1], 6.0, 3.0)
    assert torch.isfinite(big.softmax(-1)).all()


@pytest.mark.parametrize(
    "shape,dtype",
    [((40, 60), np.uint8), ((40, 60, 1), np.uint8), ((40, 60, 4), np.uint8), ((40, 60, 3), np.uint16), ((1, 1, 3), np.uint8), ((1, 900, 3), np.uint8), ((700, 2, 3), np.uint8)],
)
def test_predict_converts_inputs_and_handles_extreme_sizes(model, shape, dtype):
    rng = np.random.default_rng(1)
    image = rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)
    labels = model.predict(image)
    assert labels.shape == shape[:2]
    assert labels.min() >= 0 and labels.max() < len(VOCAB)
    if shape == (40, 60, 4):  # alpha is ignored
        assert torch.equal(labels, model.predict(image[:, :, :3]))
    if dtype == np.uint16:  # 16-bit keeps its top byte
        assert torch.equal(labels, model.predict((image >> 8).astype(np.uint8)))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"vfm_kind": "clipseg"}, "vfm_kind"),
        ({"beta": 0.0}, "beta"),
        ({"gamma": -1.0}, "gamma"),
        ({"slide_stride": 0}, "slide_stride"),
        ({"slide_stride": 400}, "must not exceed"),
        ({"vocabulary": []}, "vocabulary"),
        ({"vocabulary": [["cat"], []]}, "class 1 has no names"),
        ({"attention": "nope"}, "attention"),
    ],
)
def test_invalid_arguments_raise_value_error(model, kwargs, message):
    args = dict(vocabulary=VOCAB, text_embeddings=None)
    args.update(kwargs)
    vocabulary = args.pop("vocabulary")
    args.pop("text_embeddings")
    with pytest.raises(ValueError, match=message):
        ProxyCLIP(model.clip, model.vfm, vocabulary, **args)


def test_ablations_and_baselines_run_the_documented_math(model64):
    x = rand_windows(1, 224, 224, seed=11, dtype=torch.float64)
    clip, vfm = model64.clip, model64.vfm
    te = model64.text_embeddings
    base = model64.window_logits(x)
    no_mask = ProxyCLIP(clip, vfm, VOCAB, mask=False, text_embeddings=te).double().window_logits(x)
    no_norm = ProxyCLIP(clip, vfm, VOCAB, mask=False, shift_scale=False, text_embeddings=te).double().window_logits(x)
    assert (base - no_mask).abs().max() > 1e-4 and (no_mask - no_norm).abs().max() > 1e-4
    # normalisation without mask == softmax(gamma * S): the beta shift cancels inside the softmax
    no_mask_beta = ProxyCLIP(clip, vfm, VOCAB, mask=False, beta=0.5, text_embeddings=te).double().window_logits(x)
    assert (no_mask - no_mask_beta).abs().max() < 1e-10
    # raw VFM attention: the DINO last block's own head-averaged patch-to-patch softmax replaces the proxy
    # attention (computed in float32 by the package, hence the looser tolerance)
    raw = ProxyCLIP(clip, vfm, VOCAB, attention="vfm", text_embeddings=te).double()
    attention, grid = ref_dino_raw_attention(vfm, x[0])
    raw_ref = ref_logits_from_attention(raw, x[0], attention, grid)
    assert grid == (224 // 8, 224 // 8) and raw.window_logits(x).shape == base.shape
    assert (raw.window_logits(x)[0] - raw_ref).abs().max() < 1e-6
    assert (raw_ref - base[0]).abs().max() > 1e-3  # a different attention gives visibly different logits
    # MaskCLIP: value path only, CLIP grid; vanilla: the last block as is
    visual = clip.visual
    v = ref_clip_values(visual, x[0])  # [D, 14, 14]
    e = visual.ln_post(visual.transformer.resblocks[-1].attn.out_proj(v.flatten(1).T)) @ visual.proj
    e = F.normalize(e, dim=-1)
    ref = F.interpolate((e @ te.double().T).T.reshape(1, -1, 14, 14), size=(224, 224), mode="bilinear", align_corners=False)
    maskclip = ProxyCLIP(clip, None, VOCAB, attention="maskclip", text_embeddings=te).double()
    assert (maskclip.window_logits(x) - ref).abs().max() < 1e-10
    vanilla = ProxyCLIP(clip, None, VOCAB, attention="clip", text_embeddings=te).double()
    assert (vanilla.window_logits(x) - maskclip.window_logits(x)).abs().max() > 1e-4
    with pytest.raises(ValueError, match="needs a vfm_model"):
        ProxyCLIP(clip, None, VOCAB, text_embeddings=te)


# ------------------------------------------------------------------------------------- fast paths
def test_clip_block_fast_path_equals_open_clip_block(model):
    from proxyclip_pl.clip_encoder import _attention_block, _is_plain_attention_block

    x = torch.randn(3, 1 + 21 * 28, 64, generator=torch.Generator().manual_seed(12))
    for block in model.clip.visual.transformer.resblocks:
        assert _is_plain_attention_block(block)
        assert (_attention_block(block, x) - block(x)).abs().max() < 1e-5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = _attention_block(model.clip.visual.transformer.resblocks[0], x)
    assert (fast.float() - model.clip.visual.transformer.resblocks[0](x)).abs().max() < 0.1


def test_postprocess_chunking_does_not_change_labels():
    g = torch.Generator().manual_seed(3)
    q2c = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    logits = torch.randn(7, 53, 61, generator=g) * 0.05
    full = logits_to_labels(logits, q2c, 40.0, 0.4, chunk_elements=1 << 30)
    for chunk in (1, 53 * 61, 53 * 61 * 5 + 3):
        assert torch.equal(logits_to_labels(logits, q2c, 40.0, 0.4, chunk_elements=chunk), full)
    assert torch.equal(full, onehot_postprocess(logits, q2c, 40.0, 0.4))
    # upsampling inside, a few queries at a time == the official full upsampling then post-processing
    up = F.interpolate(logits[None], size=(120, 97), mode="bilinear", align_corners=False)[0]
    for chunk in (1, 120 * 97 * 2, 1 << 30):
        got = logits_to_labels(logits, q2c, 40.0, 0.4, size=(120, 97), chunk_elements=chunk)
        assert torch.equal(got, onehot_postprocess(up, q2c, 40.0, 0.4))
