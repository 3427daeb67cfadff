"""SCLIP / NACLIP / ClearCLIP last blocks, their positional rule, PAMR and native protocols.

Every vectorised function is checked against a direct, unbatched float64 transcription of the official
formulas written here (explicit layer norm, per-head loops, explicit softmax), on tiny random open_clip models.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from proxyclip_pl.clip_encoder import CLIP_MEAN, CLIP_STD, tokens_before_last_block
from proxyclip_pl.correlative_attention import area_filter, sclip_embeddings, sclip_labels
from proxyclip_pl.method_positional import official_pos_embed, official_tokens_before_last_block
from proxyclip_pl.native_protocols import (
    DATASETS,
    METHODS,
    NATIVE_PROTOCOLS,
    OFFICIAL_CONFIGS,
    REPORTED_MIOU,
    Protocol,
)
from proxyclip_pl.neighbourhood_attention import GAUSSIAN_STD, gaussian_attention_bias, naclip_embeddings
from proxyclip_pl.pamr import pamr, pamr_affinity
from proxyclip_pl.positional_embedding import interpolate_pos_embed_dino
from proxyclip_pl.self_self_attention import clearclip_embeddings
from tiny_models import tiny_clip

TOL = 1e-10
GRIDS = [(4, 4), (3, 5), (14, 14), (10, 14), (7, 3)]


@pytest.fixture(scope="module")
def visual(tmp_path_factory):
    model, _ = tiny_clip(tmp_path_factory.mktemp("tiny_clip_methods"))
    return model.visual.double().eval()


def _tokens(visual, grid, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    width = visual.conv1.out_channels
    return torch.randn(batch, 1 + grid[0] * grid[1], width, generator=gen, dtype=torch.float64)


# --------------------------------------------------------------------------------------------------------
# Direct transcriptions of the official formulas (one item, float64, explicit loops / softmax).
# --------------------------------------------------------------------------------------------------------


def ref_layer_norm(x, ln):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def ref_softmax_rows(s):
    out = torch.empty_like(s)
    for i in range(s.shape[0]):
        e = torch.exp(s[i] - s[i].max())
        out[i] = e / e.sum()
    return out


def ref_heads(block, x):
    """x [L, D] -> lists of per-head q, k, v [L, d_h], as ``F.linear(...).chunk(3)`` + head split."""
    attn = block.attn
    width = x.shape[-1]
    h = ref_layer_norm(x, block.ln_1)
    qkv = h @ attn.in_proj_weight.T + attn.in_proj_bias
    q, k, v = qkv[:, :width], qkv[:, width:2 * width], qkv[:, 2 * width:]
    hd = width // attn.num_heads
    split = lambda t: [t[:, i * hd:(i + 1) * hd] for i in range(attn.num_heads)]  # noqa: E731
    return split(q), split(k), split(v), hd ** -0.5


def ref_out_proj(block, z):
    return z @ block.attn.out_proj.weight.T + block.attn.out_proj.bias


def ref_mlp(block, x):
    assert type(block.mlp.gelu).__name__ == "QuickGELU"
    h = x @ block.mlp.c_fc.weight.T + block.mlp.c_fc.bias
    h = h * torch.sigmoid(1.702 * h)
    return h @ block.mlp.c_proj.weight.T + block.mlp.c_proj.bias


def ref_project(visual, x):
    return ref_layer_norm(x, visual.ln_post) @ visual.proj


def ref_sclip_item(visual, x):
    """SCLIP clip/model.py: x + CSA(ln_1 x); + mlp(ln_2 x); ln_post @ proj; drop CLS."""
    block = visual.transformer.resblocks[-1]
    qs, ks, vs, scale = ref_heads(block, x)
    outs = []
    for q, k, v in zip(qs, ks, vs):
        a = ref_softmax_rows(q @ q.T * scale) + ref_softmax_rows(k @ k.T * scale)
        outs.append(a @ v)
    x = x + ref_out_proj(block, torch.cat(outs, dim=-1))
    x = x + ref_mlp(block, ref_layer_norm(x, block.ln_2))
    return ref_project(visual, x)[1:]


def ref_gaussian_window(dim1, dim2, std):
    """NACLIP gaussian_window: linspace coordinates scaled by 1/(std*sqrt(2)), exp(-squared norm)."""
    c = 1.0 / (std * math.sqrt(2.0))
    window = torch.empty(dim1, dim2, dtype=torch.float64)
    for a in range(dim1):
        for b in range(dim2):
            u = (-(dim1 - 1) / 2.0 + a) * c
            w = (-(dim2 - 1) / 2.0 + b) * c
            window[a, b] = math.exp(-(u * u + w * w))
    return window


def ref_naclip_addition(grid, std):
    """NACLIP get_attention_addition with loops: 'same' correlation of the window with each one-hot map."""
    gh, gw = grid
    window = ref_gaussian_window(2 * gh - 1, 2 * gw - 1, std)
    n = gh * gw
    out = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    for i in range(gh):
        for j in range(gw):
            for k in range(gh):
                for l in range(gw):  # noqa: E741
                    # correlation output at (k, l) of a one-hot at (i, j): window[i - k + gh - 1, j - l + gw - 1]
                    out[1 + i * gw + j, 1 + k * gw + l] = window[i - k + gh - 1, j - l + gw - 1]
    return out


def ref_naclip_item(visual, x, grid, std=GAUSSIAN_STD):
    """NACLIP reduced arch: out_proj(softmax(k k^T * scale + Omega) v); ln_post @ proj; drop CLS."""
    block = visual.transformer.resblocks[-1]
    _, ks, vs, scale = ref_heads(block, x)
    omega = ref_naclip_addition(grid, std)
    outs = [ref_softmax_rows(k @ k.T * scale + omega) @ v for k, v in zip(ks, vs)]
    return ref_project(visual, ref_out_proj(block, torch.cat(outs, dim=-1)))[1:]


def ref_clearclip_item(visual, x):
    """ClearCLIP ignore_residual: out_proj(softmax(q q^T * scale) v); ln_post; tokens [1:]; @ proj."""
    block = visual.transformer.resblocks[-1]
    qs, _, vs, scale = ref_heads(block, x)
    outs = [ref_softmax_rows(q @ q.T * scale) @ v for q, v in zip(qs, vs)]
    return ref_project(visual, ref_out_proj(block, torch.cat(outs, dim=-1)))[1:]


METHOD_CASES = {
    "sclip": (lambda vis, t, g: sclip_embeddings(vis, t, g), lambda vis, x, g: ref_sclip_item(vis, x)),
    "naclip": (lambda vis, t, g: naclip_embeddings(vis, t, g), lambda vis, x, g: ref_naclip_item(vis, x, g)),
    "clearclip": (lambda vis, t, g: clearclip_embeddings(vis, t, g), lambda vis, x, g: ref_clearclip_item(vis, x)),
}


# --------------------------------------------------------------------------------------------------------
# Last blocks
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(METHOD_CASES))
@pytest.mark.parametrize("grid", GRIDS)
def test_method_matches_unbatched_reference(visual, method, grid):
    fn, ref = METHOD_CASES[method]
    tokens = _tokens(visual, grid, batch=2, seed=GRIDS.index(grid) + 10 * sorted(METHOD_CASES).index(method))
    with torch.no_grad():
        out = fn(visual, tokens, grid)
        assert out.shape == (2, grid[0] * grid[1], visual.proj.shape[1])
        assert out.dtype == torch.float64
        expected = torch.stack([ref(visual, tokens[b], grid) for b in range(tokens.shape[0])])
    delta = (out - expected).abs().max().item()
    assert delta < TOL, f"{method} {grid}: max |delta| = {delta:.3e}"


@pytest.mark.parametrize("method", sorted(METHOD_CASES))
def test_method_batched_equals_one_at_a_time(visual, method):
    fn, _ = METHOD_CASES[method]
    grid = (6, 9)
    tokens = _tokens(visual, grid, batch=3, seed=7)
    with torch.no_grad():
        batched = fn(visual, tokens, grid)
        single = torch.cat([fn(visual, tokens[b:b + 1], grid) for b in range(3)])
    assert (batched - single).abs().max().item() < 1e-12


@pytest.mark.parametrize("method", sorted(METHOD_CASES))
@pytest.mark.parametrize("size", [(224, 224), (160, 224), (224, 176)])
def test_method_on_real_tokens(visual, method, size):
    """Tokens from the official-rule stem on an image, square and non-square grids."""
    fn, ref = METHOD_CASES[method]
    image = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        tokens, grid = official_tokens_before_last_block(visual, image)
        assert grid == (size[0] // 16, size[1] // 16)
        out = fn(visual, tokens, grid)
        expected = torch.stack([ref(visual, tokens[b], grid) for b in range(2)])
    assert (out - expected).abs().max().item() < TOL


@pytest.mark.parametrize("method", sorted(METHOD_CASES))
def test_method_float32_close_to_float64(visual, method):
    import copy

    fn, _ = METHOD_CASES[method]
    image = torch.randn(1, 3, 176, 240, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    visual32 = copy.deepcopy(visual).float()
    with torch.no_grad():
        tokens64, grid = official_tokens_before_last_block(visual, image)
        tokens32, grid32 = official_tokens_before_last_block(visual32, image.float())
        out64 = fn(visual, tokens64, grid)
        out32 = fn(visual32, tokens32, grid32)
    assert out32.dtype == torch.float32 and grid32 == grid == (11, 15)
    assert (out32.double() - out64).abs().max().item() < 1e-4


def test_methods_differ_from_each_other(visual):
    grid = (5, 6)
    tokens = _tokens(visual, grid)
    with torch.no_grad():
        outs = [fn(visual, tokens, grid) for fn, _ in METHOD_CASES.values()]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert (outs[i] - outs[j]).abs().max() > 1e-3


def test_methods_reject_bad_token_count(visual):
    tokens = _tokens(visual, (4, 4))
    for fn, _ in METHOD_CASES.values():
        with pytest.raises(ValueError):
            fn(visual, tokens, (4, 5))


def test_naclip_bias_matches_official_conv_construction():
    """Closed form == NACLIP's window + conv2d('same') construction (einsum one-hots, permute, cls row/col)."""
    for grid in [(3, 5), (14, 14), (6, 2)]:
        gh, gw = grid
        window = ref_gaussian_window(2 * gh - 1, 2 * gw - 1, GAUSSIAN_STD)
        onehots = torch.einsum("ij,kl->ijkl", torch.eye(gh, dtype=torch.float64), torch.eye(gw, dtype=torch.float64))
        onehots = onehots.permute(0, 3, 1, 2).reshape(gh * gw, 1, gh, gw)
        patches = F.conv2d(onehots, window[None, None], padding="same").reshape(gh * gw, gh * gw)
        official = F.pad(patches, (1, 0, 1, 0))
        ours = gaussian_attention_bias(grid, GAUSSIAN_STD, dtype=torch.float64)
        assert (ours - official).abs().max().item() < 1e-14
        assert (ours - ref_naclip_addition(grid, GAUSSIAN_STD)).abs().max().item() < 1e-14
        assert torch.all(ours[0] == 0) and torch.all(ours[:, 0] == 0)
        assert torch.allclose(ours[1:, 1:].diagonal(), torch.ones(gh * gw, dtype=torch.float64))
        assert torch.equal(ours, ours.T)
    # one hand value: neighbours (0, 0) and (1, 2) are sqrt(5) apart -> exp(-5 / 50)
    bias = gaussian_attention_bias((3, 5), 5.0, dtype=torch.float64)
    assert bias[1, 1 + 1 * 5 + 2].item() == pytest.approx(math.exp(-0.1), abs=1e-15)
    with pytest.raises(ValueError):
        gaussian_attention_bias((3, 3), 0.0)


# --------------------------------------------------------------------------------------------------------
# Positional rule
# --------------------------------------------------------------------------------------------------------


def _cubic_weights(t, a=-0.75):
    def near(x):
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return (far(t + 1), near(t), near(1 - t), far(2 - t))


def ref_bicubic_axis(values, out_size, scale):
    """1-D PyTorch bicubic (align_corners=False, given scale factor): src = (o + .5) / scale - .5, clamped taps."""
    n = len(values)
    out = []
    for o in range(out_size):
        real = (o + 0.5) * (1.0 / scale) - 0.5
        base = math.floor(real)
        weights = _cubic_weights(real - base)
        out.append(sum(w * values[min(max(base - 1 + i, 0), n - 1)] for i, w in enumerate(weights)))
    return out


def ref_official_pos_embed(pos, gh, gw):
    side = math.isqrt(pos.shape[0] - 1)
    if gh * gw == side * side:
        return pos.clone()
    table = pos[1:].reshape(side, side, -1)
    out = torch.empty(gh, gw, pos.shape[1], dtype=torch.float64)
    for ch in range(pos.shape[1]):
        cols = [ref_bicubic_axis(table[:, c, ch].tolist(), gh, (gh + 0.1) / side) for c in range(side)]
        for r in range(gh):
            out[r, :, ch] = torch.tensor(
                ref_bicubic_axis([cols[c][r] for c in range(side)], gw, (gw + 0.1) / side), dtype=torch.float64
            )
    return torch.cat([pos[:1], out.reshape(gh * gw, -1)])


@pytest.mark.parametrize("grid", [(10, 14), (21, 31), (5, 3), (28, 28)])
def test_official_pos_embed_matches_bicubic_reference(grid):
    pos = torch.randn(1 + 14 * 14, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = official_pos_embed(pos, *grid)
    assert ours.shape == (1 + grid[0] * grid[1], 6) and ours.dtype == torch.float64
    assert (ours - ref_official_pos_embed(pos, *grid)).abs().max().item() < TOL
    assert torch.equal(ours[0], pos[0])
    # same interpolation as ProxyCLIP's DINO rule (which runs it in fp32)
    assert (ours - interpolate_pos_embed_dino(pos, *grid)).abs().max().item() < 1e-5
    # leading batch dim kept
    assert torch.equal(official_pos_embed(pos[None], *grid)[0], ours)


def test_official_pos_embed_skips_same_count_grids():
    pos = torch.randn(1 + 14 * 14, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert official_pos_embed(pos, 14, 14) is pos
    # 7 x 28 has 196 patches: the official code adds the stored table unchanged; ProxyCLIP resamples it
    assert official_pos_embed(pos, 7, 28) is pos
    assert (interpolate_pos_embed_dino(pos, 7, 28) - pos).abs().max() > 1e-2


def test_official_tokens_before_last_block(visual):
    image = torch.randn(1, 3, 160, 224, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        ours, grid = official_tokens_before_last_block(visual, image)
        proxy, proxy_grid = tokens_before_last_block(visual, image)
        assert grid == proxy_grid == (10, 14)
        assert (ours - proxy).abs().max().item() < 1e-4  # ProxyCLIP's rule resamples in fp32
        # hand-built stem with the reference positional embedding
        x = visual.conv1(image).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.expand(1, 1, -1), x], dim=1)
        x = x + ref_official_pos_embed(visual.positional_embedding, 10, 14)
        x = visual.ln_pre(x)
        for block in visual.transformer.resblocks[:-1]:
            x = block(x)
        assert (ours - x).abs().max().item() < TOL
        # 112 x 448 -> 7 x 28 = 196 patches: the two rules differ
        wide = torch.randn(1, 3, 112, 448, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        ours_wide, wide_grid = official_tokens_before_last_block(visual, wide)
        proxy_wide, _ = tokens_before_last_block(visual, wide)
        assert wide_grid == (7, 28)
        assert (ours_wide - proxy_wide).abs().max().item() > 1e-3


# --------------------------------------------------------------------------------------------------------
# SCLIP post-processing (area_thd)
# --------------------------------------------------------------------------------------------------------


def ref_sclip_postprocess(logits, query_idx, num_cls, logit_scale, prob_thd, area_thd):
    """SCLIP clip_segmentor.py postprocess_result, pixel by pixel."""
    num_q, height, width = logits.shape
    probs = torch.empty(num_cls, height, width, dtype=torch.float64)
    for y in range(height):
        for x in range(width):
            s = [logit_scale * logits[q, y, x].item() for q in range(num_q)]
            m = max(s)
            e = [math.exp(v - m) for v in s]
            total = sum(e)
            for c in range(num_cls):
                probs[c, y, x] = max([e[q] / total if query_idx[q] == c else 0.0 for q in range(num_q)])
    if area_thd is not None:
        area = [0] * num_cls
        for y in range(height):
            for x in range(width):
                area[int(probs[:, y, x].argmax())] += 1
        fg = sum(area[1:])
        for c in range(1, num_cls):
            if not area[c] > area_thd * fg:
                probs[c] = 0.0
    labels = torch.empty(height, width, dtype=torch.long)
    for y in range(height):
        for x in range(width):
            column = probs[:, y, x].tolist()
            best = max(column)
            labels[y, x] = 0 if best < prob_thd else column.index(best)
    return labels


@pytest.mark.parametrize("area_thd", [None, 0.1, 0.3])
@pytest.mark.parametrize("prob_thd", [0.0, 0.4])
def test_sclip_labels_match_reference(area_thd, prob_thd):
    gen = torch.Generator().manual_seed(11)
    query_idx = [0, 0, 1, 2, 2, 3]
    logits = torch.rand(len(query_idx), 9, 11, generator=gen, dtype=torch.float64) * 0.1
    ours = sclip_labels(logits, torch.tensor(query_idx), 4, 65.0, prob_thd, area_thd)
    assert torch.equal(ours, ref_sclip_postprocess(logits, query_idx, 4, 65.0, prob_thd, area_thd))


def test_area_filter_hand_case():
    # 4 x 5 image: background 0 on 5 pixels, class 1 on 14, class 2 on 1 pixel (1/15 of the foreground)
    probs = torch.zeros(3, 4, 5, dtype=torch.float64)
    probs[1] = 0.6
    probs[0, 0] = 0.7  # first row: background wins
    probs[2, 3, 4] = 0.9  # one pixel of class 2
    probs[0, 3, 4] = 0.05
    filtered = area_filter(probs, 0.1)
    assert torch.equal(filtered[2], torch.zeros(4, 5, dtype=torch.float64))  # 1/15 <= 0.1 -> dropped
    assert torch.equal(filtered[:2], probs[:2])
    assert torch.equal(area_filter(probs, 0.05), probs)  # 1/15 > 0.05 -> kept
    labels = sclip_labels(torch.log(probs.clamp_min(1e-30)), torch.arange(3), 3, 1.0, 0.0, 0.1)
    assert labels[3, 4].item() == 1 and labels[0, 0].item() == 0


# --------------------------------------------------------------------------------------------------------
# PAMR
# --------------------------------------------------------------------------------------------------------

NEIGH = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
WINDOW = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 0), (0, 1), (1, -1), (1, 0), (1, 1)]


def ref_pamr_item(image, mask, num_iter, dilations):
    """PAMR (pamr.py) on one item, pixel by pixel; image [K, H, W], mask [C, H, W] already at image size."""
    k_ch, height, width = image.shape
    img = image.tolist()

    def at(plane, y, x):
        return plane[min(max(y, 0), height - 1)][min(max(x, 0), width - 1)]

    weights = [[None] * width for _ in range(height)]
    for y in range(height):
        for x in range(width):
            logits = [0.0] * (8 * len(dilations))
            for ch in range(k_ch):
                samples = [at(img[ch], y + dy * d, x + dx * d) for d in dilations for dy, dx in WINDOW]
                mean = sum(samples) / len(samples)
                sigma = math.sqrt(sum((s - mean) ** 2 for s in samples) / (len(samples) - 1))
                centre = img[ch][y][x]
                p = 0
                for d in dilations:
                    for dy, dx in NEIGH:
                        logits[p] += -abs(centre - at(img[ch], y + dy * d, x + dx * d)) / (1e-8 + 0.1 * sigma) / k_ch
                        p += 1
            top = max(logits)
            e = [math.exp(v - top) for v in logits]
            weights[y][x] = [v / sum(e) for v in e]
    planes = mask.tolist()
    for _ in range(num_iter):
        new = []
        for plane in planes:
            out = [[0.0] * width for _ in range(height)]
            for y in range(height):
                for x in range(width):
                    p = 0
                    for d in dilations:
                        for dy, dx in NEIGH:
                            out[y][x] += weights[y][x][p] * at(plane, y + dy * d, x + dx * d)
                            p += 1
            new.append(out)
        planes = new
    return torch.tensor(planes, dtype=torch.float64)


@pytest.mark.parametrize("dilations", [(8, 16), (1, 2), (3,)])
def test_pamr_matches_loop_reference(dilations):
    gen = torch.Generator().manual_seed(5)
    image = torch.randn(2, 3, 12, 13, generator=gen, dtype=torch.float64)
    mask = torch.randn(2, 2, 12, 13, generator=gen, dtype=torch.float64)
    ours = pamr(image, mask, 2, dilations)
    expected = torch.stack([ref_pamr_item(image[b], mask[b], 2, dilations) for b in range(2)])
    assert (ours - expected).abs().max().item() < 1e-12
    single = torch.cat([pamr(image[b:b + 1], mask[b:b + 1], 2, dilations) for b in range(2)])
    assert (ours - single).abs().max().item() < 1e-14


def test_pamr_uniform_image_averages_neighbours():
    """Uniform image: every |difference| and sigma is 0, so all 16 weights are 1/16; a step is the mean of the
    16 dilated neighbours (replicate border)."""
    image = torch.full((1, 3, 40, 40), 0.3, dtype=torch.float64)
    weights = pamr_affinity(image)
    assert weights.shape == (1, 1, 16, 40, 40)
    assert torch.allclose(weights, torch.full_like(weights, 1 / 16), atol=1e-15, rtol=0)
    ramp = torch.arange(40, dtype=torch.float64).expand(40, 40)[None, None].clone()  # mask = column index
    out = pamr(image, ramp, 1)[0, 0]
    interior = slice(16, 24)  # every dilated neighbour inside: symmetric offsets keep a linear ramp
    assert torch.allclose(out[:, interior], ramp[0, 0, :, interior], atol=1e-12, rtol=0)
    # column 0: per dilation d the 3 right neighbours read d, the 5 others read 0 -> (3*8 + 3*16) / 16 = 4.5
    assert torch.allclose(out[:, 0], torch.full((40,), 4.5, dtype=torch.float64), atol=1e-12, rtol=0)
    # a constant mask is a fixed point for any image
    noisy = torch.randn(1, 3, 20, 21, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    const = torch.full((1, 2, 20, 21), -1.25, dtype=torch.float64)
    assert torch.allclose(pamr(noisy, const, 3), const, atol=1e-13, rtol=0)


def test_pamr_two_region_image():
    """Single-channel image 0 | 1 split after column 7 and the matching one-hot mask.

    At (20, 7), for both dilations the 3 right neighbours lie across the edge and the 5 others (left ones
    clamped to column 0) on the same side. The 18 window samples are six 1s and twelve 0s: unbiased
    sigma = 2 / sqrt(17); across-edge weight exp(-t) with t = 1 / (1e-8 + 0.1 * sigma). One step gives
    10 / (10 + 6 exp(-t)) for the left-region channel.
    """
    image = torch.zeros(1, 1, 40, 32, dtype=torch.float64)
    image[..., 8:] = 1.0
    mask = torch.stack([1 - image[0, 0], image[0, 0]])[None]
    out = pamr(image, mask, 1)
    t = 1.0 / (1e-8 + 0.1 * 2.0 / math.sqrt(17.0))
    expected = 10.0 / (10.0 + 6.0 * math.exp(-t))
    assert out[0, 0, 20, 7].item() == pytest.approx(expected, abs=1e-15)
    assert out[0, 1, 20, 7].item() == pytest.approx(1.0 - expected, abs=1e-15)
    # at column 24 or more every dilated neighbour lies in the right region: the mask is unchanged
    assert torch.equal(out[0, :, 16:24, 24:], mask[0, :, 16:24, 24:])
    assert torch.allclose(out.sum(1), torch.ones(1, 40, 32, dtype=torch.float64), atol=1e-14, rtol=0)
    assert (out - ref_pamr_item(image[0], mask[0], 1, (8, 16))[None]).abs().max().item() < 1e-12


def test_pamr_resizes_mask_with_align_corners_and_validates():
    gen = torch.Generator().manual_seed(9)
    image = torch.randn(1, 3, 17, 23, generator=gen, dtype=torch.float64)
    small = torch.randn(1, 4, 5, 6, generator=gen, dtype=torch.float64)
    resized = F.interpolate(small, size=(17, 23), mode="bilinear", align_corners=True)
    assert torch.equal(pamr(image, small, 0), resized)
    assert (pamr(image, small, 2) - pamr(image, resized, 2)).abs().max().item() == 0
    assert pamr(image, small.float(), 1).dtype == torch.float64
    with pytest.raises(ValueError):
        pamr(image, small, -1)
    with pytest.raises(ValueError):
        pamr(image, small[0], 1)
    with pytest.raises(ValueError):
        pamr_affinity(image, (0,))


# --------------------------------------------------------------------------------------------------------
# Native protocols against the official configs (values copied from the repositories)
# --------------------------------------------------------------------------------------------------------

# Constructor defaults of each official segmentor.
OFFICIAL_DEFAULTS = {
    # SCLIP clip_segmentor.py CLIPForSegmentation.__init__
    "sclip": dict(pamr_steps=0, prob_thd=0.0, logit_scale=40, slide_stride=112, slide_crop=224, area_thd=None),
    # NACLIP naclip.py NACLIP.__init__ (pamr_steps=10; test_all.sh '... on' sets 10 as well)
    "naclip": dict(pamr_steps=10, prob_thd=0.0, logit_scale=40, slide_stride=112, slide_crop=224, area_thd=None),
    # ClearCLIP clearclip_segmentor.py ClearCLIPSegmentation.__init__ (no PAMR, no area_thd)
    "clearclip": dict(pamr_steps=0, prob_thd=0.0, logit_scale=50, slide_stride=224, slide_crop=448, area_thd=None),
}

# Per config file: Resize scale and the model=dict(...) overrides.
OFFICIAL_CONFIG_VALUES = {
    "sclip": {
        "voc21": ((2048, 336), dict(logit_scale=65, prob_thd=0.1, area_thd=0.1)),
        "context60": ((2048, 336), dict(logit_scale=50, prob_thd=0.1)),
        "coco_object": ((2048, 336), dict(logit_scale=50, prob_thd=0.1)),
        "voc20": ((2048, 336), {}),
        "context59": ((2048, 336), {}),
        "coco_stuff": ((2048, 448), {}),
        "cityscapes": ((2048, 560), {}),
        "ade20k": ((2048, 336), {}),
    },
    "naclip": {
        "voc21": ((2048, 336), dict(prob_thd=0.1, slide_crop=0)),
        "context60": ((2048, 336), dict(prob_thd=0.1)),
        "coco_object": ((2048, 336), dict(prob_thd=0.1)),
        "voc20": ((2048, 336), dict(slide_crop=0)),
        "context59": ((2048, 336), {}),
        "coco_stuff": ((2048, 336), {}),
        "cityscapes": ((2048, 560), {}),
        "ade20k": ((2048, 336), {}),
    },
    "clearclip": {
        "voc21": ((2048, 448), dict(prob_thd=0.5)),
        "context60": ((2048, 448), dict(prob_thd=0.15)),
        "coco_object": ((2048, 448), dict(prob_thd=0.4)),
        "voc20": ((2048, 448), {}),
        "context59": ((2048, 448), {}),
        "coco_stuff": ((2048, 448), {}),
        "cityscapes": ((2048, 448), dict(slide_crop=224)),
        "ade20k": ((2048, 448), {}),
    },
}


@pytest.mark.parametrize("method", sorted(OFFICIAL_CONFIG_VALUES))
@pytest.mark.parametrize("dataset", DATASETS)
def test_native_protocol_rows_match_official_configs(method, dataset):
    (cap, short), overrides = OFFICIAL_CONFIG_VALUES[method][dataset]
    cfg = {**OFFICIAL_DEFAULTS[method], **overrides}
    expected = Protocol(
        short_side=short, long_side_cap=cap, slide_crop=cfg["slide_crop"], slide_stride=cfg["slide_stride"],
        logit_scale=float(cfg["logit_scale"]), prob_thd=float(cfg["prob_thd"]), area_thd=cfg["area_thd"],
        pamr_steps=cfg["pamr_steps"],
    )
    assert NATIVE_PROTOCOLS[method][dataset] == expected


def test_native_protocol_tables_complete_and_read_only():
    assert set(NATIVE_PROTOCOLS) == set(METHODS) == {"sclip", "naclip", "clearclip", "trident", "corrclip"}
    assert set(REPORTED_MIOU) == set(METHODS) | {"proxyclip"}  # ProxyCLIP's paper row too
    assert set(OFFICIAL_CONFIGS) == set(DATASETS)
    for method in NATIVE_PROTOCOLS:
        assert tuple(NATIVE_PROTOCOLS[method]) == DATASETS
        assert set(REPORTED_MIOU[method].miou) == set(DATASETS)
    with pytest.raises(TypeError):
        NATIVE_PROTOCOLS["sclip"]["voc21"] = None
    with pytest.raises(AttributeError):
        NATIVE_PROTOCOLS["sclip"]["voc21"].prob_thd = 0.5
    assert NATIVE_PROTOCOLS["naclip"]["voc21"].whole_image and not NATIVE_PROTOCOLS["naclip"]["voc20"].slide_crop
    assert not NATIVE_PROTOCOLS["sclip"]["voc21"].whole_image


def test_method_constants():
    for info in METHODS.values():
        assert info.mean == (122.771, 116.746, 104.094) and info.std == (68.501, 66.632, 70.323)
        for official, clip in zip(info.mean + info.std, CLIP_MEAN + CLIP_STD):
            assert official == pytest.approx(clip * 255, abs=6e-4)
    assert METHODS["sclip"].synonym_separator == METHODS["naclip"].synonym_separator == ", "
    assert METHODS["clearclip"].synonym_separator == ","
    assert METHODS["sclip"].pamr_dilations == METHODS["naclip"].pamr_dilations == (8, 16)
    assert METHODS["clearclip"].pamr_dilations == ()
    assert REPORTED_MIOU["naclip"].miou["voc21"] == 64.07
    assert REPORTED_MIOU["clearclip"].miou["voc21"] is None


@pytest.mark.parametrize(
    "changes",
    [
        dict(short_side=0), dict(long_side_cap=100), dict(slide_crop=-1), dict(slide_stride=0),
        dict(slide_stride=300), dict(logit_scale=0.0), dict(prob_thd=1.5), dict(area_thd=-0.1),
        dict(pamr_steps=-1), dict(short_side=336.0),
    ],
)
def test_protocol_validation(changes):
    base = dict(short_side=336, long_side_cap=2048, slide_crop=224, slide_stride=112, logit_scale=40.0,
                prob_thd=0.0, area_thd=None, pamr_steps=0)
    Protocol(**base)
    with pytest.raises(ValueError):
        Protocol(**{**base, **changes})
