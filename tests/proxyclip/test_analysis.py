"""The math of the Section 3.1 analyses (proxyclip_pl.analysis): patch labels, CLIP attention scores, streaming
binned AP against the exact AP by sorting, similarity statistics against numpy."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from proxyclip_pl.analysis import BinnedPR, clip_attention_scores, exact_average_precision, patch_labels, seed_patch
from pairs_reference import off_diagonal, pairs_of
from proxyclip_pl.analysis.lightning_module import AnalysisModule
from proxyclip_pl.analysis.stats import SimilarityStats, histogram_quantile
from proxyclip_pl.clip_encoder import CLIP_MEAN, CLIP_STD
from proxyclip_pl.positional_embedding import interpolate_pos_embed_dino
from tiny_models import tiny_clip

#: the largest |binned AP - exact AP| any test below may see (the contract allows 0.005)
AP_TOLERANCE = 1e-5


# ------------------------------------------------------------------------------------------------ patch labels
def literal_patch_labels(label: np.ndarray, grid, ignore=255) -> list[int]:
    h0, w0 = label.shape
    gh, gw = grid
    cells = {}
    for y in range(h0):
        for x in range(w0):
            cells.setdefault((y * gh // h0, x * gw // w0), []).append(int(label[y, x]))
    out = []
    for r in range(gh):
        for c in range(gw):
            votes = Counter(cells.get((r, c), []))
            if not votes:
                out.append(ignore)
                continue
            top = max(votes.values())
            out.append(min(v for v, n in votes.items() if n == top))
    return out


def test_patch_labels_majority_ties_and_ignore():
    label = np.array([[1, 1, 2, 2],
                      [1, 3, 2, 255],
                      [255, 255, 4, 5],
                      [255, 7, 5, 4]])
    # cells: {1,1,1,3} -> 1; {2,2,2,255} -> 2; {255,255,255,7} -> 255 (dropped); {4,5,5,4} tie -> 4
    assert patch_labels(label, (2, 2)).tolist() == [1, 2, 255, 4]
    # a class beats 255 on a tie
    assert patch_labels(np.array([[255, 9]]), (1, 1)).tolist() == [9]
    # a grid finer than the map: cells without pixels are dropped; another ignore value
    out = patch_labels(torch.tensor([[0, 1]]), (2, 4), ignore_index=77)
    assert out.dtype == torch.long and out.tolist() == [0, 77, 1, 77, 77, 77, 77, 77]


@pytest.mark.parametrize("seed", range(4))
def test_patch_labels_match_a_literal_vote(seed):
    rng = np.random.default_rng(seed)
    h0, w0 = rng.integers(5, 40, size=2)
    grid = tuple(int(g) for g in rng.integers(1, 12, size=2))
    label = rng.choice([0, 1, 2, 3, 170, 255], size=(h0, w0), p=[0.3, 0.2, 0.1, 0.1, 0.1, 0.2])
    assert patch_labels(torch.from_numpy(label), grid).tolist() == literal_patch_labels(label, grid)


def test_off_diagonal_pairs():
    m = torch.arange(16).reshape(4, 4)
    mask = ~torch.eye(4, dtype=torch.bool)
    assert off_diagonal(m).tolist() == m[mask].tolist()
    assert off_diagonal(torch.ones(1, 1)).numel() == 0
    scores = torch.rand(6, 6)
    labels = torch.tensor([0, 255, 1, 0, 1, 255])
    s, t = pairs_of(scores, labels)
    kept = [0, 2, 3, 4]
    ref = [(scores[i, j].item(), labels[i] == labels[j]) for i in kept for j in kept if i != j]
    assert s.tolist() == [r[0] for r in ref] and t.tolist() == [bool(r[1]) for r in ref]


def test_seed_patch_rule():
    assert seed_patch((0.0, 0.0), (7, 5)) == 0
    assert seed_patch((0.999, 0.999), (7, 5)) == 34
    assert seed_patch((0.5, 0.25), (4, 4)) == 2 * 4 + 1


# ---------------------------------------------------------------------------------------- CLIP attention
def literal_clip_attention(visual, images):
    """Rule 2 written out: open_clip's own block forward for the blocks before the last, one head at a time."""
    x = (images - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    x = visual.conv1(x)
    gh, gw = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)
    x = visual.ln_pre(x + interpolate_pos_embed_dino(visual.positional_embedding, gh, gw))
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)
    last = visual.transformer.resblocks[-1]
    u = last.ln_1(x)[:, 1:]
    width, heads = u.shape[-1], last.attn.num_heads
    d = width // heads
    w, b = last.attn.in_proj_weight, last.attn.in_proj_bias
    proj = {name: u @ w[i * width:(i + 1) * width].T + b[i * width:(i + 1) * width] for i, name in enumerate("qkv")}
    out = {}
    for ab in ("qk", "qq", "kk", "vv"):
        per_head = []
        for h in range(heads):
            a = proj[ab[0]][..., h * d:(h + 1) * d]
            c = proj[ab[1]][..., h * d:(h + 1) * d]
            logits = a @ c.transpose(-1, -2) / math.sqrt(d)
            e = torch.exp(logits - logits.max(-1, keepdim=True).values)
            per_head.append(e / e.sum(-1, keepdim=True))
        out[ab] = torch.stack(per_head, dim=1)
    return out


@pytest.mark.parametrize("size", [112, 224])  # 7x7 (interpolated positions) and the trained 14x14 grid
def test_clip_attention_scores_match_a_literal_per_head_computation(tmp_path, size):
    clip_model = tiny_clip(tmp_path)[0]
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    scores = clip_attention_scores(clip_model, images)
    with torch.no_grad():
        ref = literal_clip_attention(clip_model.visual, images)
    heads, length = clip_model.visual.transformer.resblocks[-1].attn.num_heads, (size // 16) ** 2
    assert set(scores) == {"qk", "qq", "kk", "vv"}
    for ab, value in scores.items():
        assert value.shape == (2, heads, length, length) and value.dtype == torch.float32
        torch.testing.assert_close(value, ref[ab], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(value.sum(-1), torch.ones(2, heads, length), atol=1e-5, rtol=0)
    # the tower alone gives the same
    torch.testing.assert_close(clip_attention_scores(clip_model.visual, images)["qk"], scores["qk"])


# ---------------------------------------------------------------------------------------------- binned AP
def binned(scores, targets, transform="identity", num_bins=2 ** 16, pieces=1):
    pr = BinnedPR(num_bins, transform)
    for s, t in zip(np.array_split(scores, pieces), np.array_split(targets, pieces)):
        pr.update(torch.from_numpy(s), torch.from_numpy(t))
    return pr


def narrow_attention_pairs(rng, length=441, n=300_000, signal=0.01):
    """Attention-like scores 1/L +- 10 % (tiny random towers), positives shifted up by a small signal."""
    targets = rng.random(n) < 0.2
    scores = (1 + 0.1 * (2 * rng.random(n) - 1) + signal * targets * rng.random(n)) / length
    return np.clip(scores, 0.9 / length, 1.1 / length).astype(np.float32), targets


@pytest.mark.parametrize("transform", ["log", "identity"])
@pytest.mark.parametrize("seed", range(3))
def test_binned_ap_on_narrow_ranges_matches_exact_ap(transform, seed):
    rng = np.random.default_rng(seed)
    scores, targets = narrow_attention_pairs(rng, length=[441, 4096, 49][seed])
    exact = exact_average_precision(scores, targets)
    result = binned(scores, targets, transform, pieces=5).compute()
    assert abs(result.ap - exact) <= AP_TOLERANCE
    assert result.ap_low <= exact + 1e-12 and exact <= result.ap_high + 1e-12
    assert result.max_error <= 1e-3


@pytest.mark.parametrize("seed", range(3))
def test_binned_ap_on_random_data_matches_exact_ap(seed):
    rng = np.random.default_rng(seed)
    n = 200_000
    targets = rng.random(n) < rng.uniform(0.01, 0.5)
    kind = seed % 3
    if kind == 0:  # cosine-like
        scores = np.tanh(rng.normal(size=n) + 0.7 * targets)
    elif kind == 1:  # heavy-tailed attention-like, spanning many decades
        scores = np.exp(rng.normal(-6, 3, size=n) + 1.5 * targets)
    else:  # few distinct values: ties everywhere
        scores = rng.integers(0, 7, size=n) + targets * rng.integers(0, 2, size=n)
    scores = scores.astype(np.float32)
    exact = exact_average_precision(scores, targets)
    transform = "log" if kind == 1 else "identity"  # as the command bins attention and cosine similarities
    result = binned(scores, targets, transform, pieces=3).compute()
    assert abs(result.ap - exact) <= AP_TOLERANCE
    assert result.ap_low <= exact + 1e-12 <= result.ap_high + 2e-12
    if kind == 2:
        assert result.ap == pytest.approx(exact, abs=1e-12)  # every bin a tie: exact
    if kind == 1:  # eight decades on a linear grid: the certified interval still holds, and says it is wide
        linear = binned(scores, targets, "identity").compute()
        assert linear.ap_low <= exact <= linear.ap_high and linear.max_error > 0.005


@pytest.mark.parametrize("num_bins", [16, 256, 4096])
def test_binned_ap_bounds_hold_with_coarse_bins(num_bins):
    rng = np.random.default_rng(num_bins)
    targets = rng.random(50_000) < 0.3
    scores = (rng.normal(size=50_000) + targets).astype(np.float32)
    exact = exact_average_precision(scores, targets)
    result = binned(scores, targets, num_bins=num_bins).compute()
    assert result.ap_low <= exact <= result.ap_high
    assert abs(result.ap - exact) <= result.max_error


def test_binned_ap_of_constant_scores_is_the_base_rate():
    targets = np.r_[np.ones(30, bool), np.zeros(70, bool)]
    result = binned(np.full(100, 0.25, np.float32), targets).compute()
    assert result.ap == pytest.approx(0.3, abs=1e-15) and result.max_error == 0
    assert exact_average_precision(np.full(100, 0.25), targets) == pytest.approx(0.3)


def test_binned_pr_merge_equals_one_pass_and_memory_is_fixed():
    """Two 'processes' with different ranges (so different grids) merged == one process seeing everything."""
    rng = np.random.default_rng(7)
    a, ta = narrow_attention_pairs(rng, n=50_000)
    b, tb = (rng.random(80_000) * 0.02).astype(np.float32), rng.random(80_000) < 0.1
    whole = binned(np.r_[a, b], np.r_[ta, tb], "log")
    one, two = binned(a, ta, "log"), binned(b, tb, "log", pieces=4)
    assert (one.level, one.offset) != (whole.level, whole.offset)
    one.merge(two)
    assert (one.level, one.offset) == (whole.level, whole.offset)
    for name in ("pos", "neg", "vmin", "vmax", "top_pos", "top_neg", "bot_pos", "bot_neg"):
        assert torch.equal(getattr(one, name), getattr(whole, name)), name
        assert getattr(one, name).numel() == 2 ** 16  # whatever the number of pairs
    assert one.compute().ap == whole.compute().ap


def test_pr_curve_counts_are_exact():
    rng = np.random.default_rng(3)
    scores, targets = narrow_attention_pairs(rng, n=40_000)
    result = binned(scores, targets, "log").compute()
    curve = result.curve()
    thresholds = np.array(curve["thresholds"])
    assert len(thresholds) >= 100 and np.all(np.diff(thresholds) > 0)
    assert curve["recall"][0] >= 0.99 and curve["recall"][-1] <= 0.2
    assert curve["positives"] == targets.sum() and curve["negatives"] == (~targets).sum()
    for k in range(0, len(thresholds), 37):
        above = scores.astype(np.float64) >= thresholds[k]
        assert curve["tp"][k] == int((above & targets).sum()) and curve["fp"][k] == int((above & ~targets).sum())
        tp, fp = curve["tp"][k], curve["fp"][k]
        assert curve["precision"][k] == (tp / (tp + fp) if tp + fp else 1.0)
        assert curve["recall"][k] == tp / curve["positives"]
    # few distinct scores: padded above the top to 100 thresholds
    small = binned(np.array([0.1, 0.2, 0.2], np.float32), np.array([True, False, True])).compute().curve()
    assert len(small["thresholds"]) == 100 and small["tp"][:2] == [2, 1] and small["recall"][-1] == 0


def test_row_blocks_of_the_module_give_the_pairs_of_one_image():
    """AnalysisModule.add_pairs bins the pair matrix in row blocks: the same histogram as all pairs at once."""
    rng = torch.Generator().manual_seed(0)
    scores = torch.rand(60, 60, generator=rng)
    labels = torch.randint(0, 4, (60,), generator=rng)
    labels[::7] = 255
    module = AnalysisModule("coherence", None, [("vfm:x", torch.nn.Identity(), "dino")], 112, 1, "unused",
                            num_bins=1024, pair_chunk=100)
    module.on_test_epoch_start()
    module.add_pairs("vfm:x", scores, labels)
    s, t = pairs_of(scores, labels)
    ref = BinnedPR(1024)
    ref.update(s, t)
    got = module.pr["vfm:x"]
    assert torch.equal(got.pos, ref.pos) and torch.equal(got.neg, ref.neg) and torch.equal(got.vmin, ref.vmin)


# -------------------------------------------------------------------------------------- similarity stats
def similarity_batch(seed, batch=3, length=150, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, length, 16, generator=g) * spread + torch.randn(1, 1, 16, generator=g)
    f = F.normalize(features, dim=-1)
    return f @ f.transpose(1, 2)


def check_stats(values: np.ndarray, stats: dict, quantile_tol: float):
    assert stats["mean"] == pytest.approx(values.mean(), abs=1e-5)
    assert stats["std"] == pytest.approx(values.std(), abs=1e-5)
    assert stats["min"] == pytest.approx(values.min(), abs=1e-5)
    assert stats["max"] == pytest.approx(values.max(), abs=1e-5)
    for name, q in {"q05": 0.05, "q25": 0.25, "median": 0.5, "q75": 0.75, "q95": 0.95}.items():
        assert abs(stats[name] - np.quantile(values, q)) <= quantile_tol, name


@pytest.mark.parametrize("spread", [1.0, 0.01])  # 0.01: every similarity close to 1 (a narrow range)
def test_similarity_stats_match_numpy(spread):
    beta, gamma = 1.2, 3.0
    batches = [similarity_batch(seed, spread=spread) for seed in range(3)]
    metric = SimilarityStats(beta, gamma)
    for s in batches:
        metric.update(s)
    result = metric.compute()
    s = torch.cat(batches).double()
    after = gamma * (s - beta * s.mean(dim=(1, 2), keepdim=True))
    s, after = s.numpy().ravel(), after.numpy().ravel()
    assert result["num_entries"] == s.size == 9 * 150 * 150
    check_stats(s, result["before"], 0.005 / 10)
    check_stats(after, result["after"], 0.005 * gamma / 10)
    assert result["after"]["frac_nonnegative"] == pytest.approx((after >= 0).mean(), abs=1e-4)
    assert set(result) == {"num_entries", "beta", "gamma", "before", "after", "histograms"}


def test_histogram_quantile_edge_cases():
    hist = np.zeros(8, np.int64)
    hist[3] = 1
    assert histogram_quantile(hist, 0.0, 8.0, 0.5, 3.25, 3.25) == 3.25  # one value: clamped to it
    hist[5] = 1
    assert histogram_quantile(hist, 0.0, 8.0, 0.5, 3.25, 5.75) == pytest.approx(4.5)


def test_ties_at_the_ends_of_a_bin_are_exact():
    """Two distinct scores per bin (num_bins=4): each bin is a top tie and a bottom tie, nothing unordered."""
    rng = np.random.default_rng(11)
    values = np.array([0.0, 0.1, 0.3, 0.35, 0.6, 0.62, 0.9, 0.95], np.float32)
    scores = rng.choice(values, size=20_000)
    targets = rng.random(20_000) < (0.1 + 0.8 * scores)
    result = binned(scores, targets, num_bins=4, pieces=3).compute()
    assert len(result.thresholds) == 4  # the bins really hold two values each
    assert result.ap == pytest.approx(exact_average_precision(scores, targets), abs=1e-12)
    assert result.max_error == pytest.approx(0, abs=1e-12)


def _sync_worker(rank, world, init_file, scores, targets, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    part = slice(0, 30_000) if rank == 0 else slice(30_000, None)  # different ranges, so different grids
    pr = BinnedPR(2 ** 12, "log")
    pr.update(torch.from_numpy(scores[part]), torch.from_numpy(targets[part]))
    pr.sync("cpu")
    metric = SimilarityStats()
    metric.update(similarity_batch(rank))
    stats = metric.compute()
    if rank == 0:
        torch.save({"state": pr.state, "level": pr.level, "ap": pr.compute().ap, "stats": stats}, out)
    dist.destroy_process_group()


@pytest.mark.ddp
def test_sync_across_two_processes_equals_one_process(tmp_path):
    import torch.multiprocessing as mp

    rng = np.random.default_rng(5)
    scores, targets = narrow_attention_pairs(rng, n=60_000)
    scores[30_000:] *= 0.5
    out = tmp_path / "synced.pt"
    mp.spawn(_sync_worker, args=(2, str(tmp_path / "init"), scores, targets, str(out)), nprocs=2)
    synced = torch.load(out, weights_only=False)
    whole = binned(scores, targets, "log", num_bins=2 ** 12)
    assert synced["level"] == whole.level and synced["ap"] == whole.compute().ap
    for name, value in whole.state.items():
        assert torch.equal(synced["state"][name], value), name
    one = SimilarityStats()
    one.update(torch.cat([similarity_batch(0), similarity_batch(1)]))
    expected = one.compute()
    for side in ("before", "after"):
        for key, value in expected[side].items():
            assert synced["stats"][side][key] == pytest.approx(value, abs=1e-9), (side, key)
