"""Trident (ICCV 2025) parity: ``proxyclip_pl.Trident`` against ``tests/trident_reference.py``, a literal transcription
of the official forward (YuHengsss/Trident @ a93b346; checked bit for bit against the official code itself, run on
the same tiny weights in float32 and float64).

Tiny seeded random towers (open_clip ViT/16 and ViT/14, timm DINO ViT/8, timm samvit at 256 px with random
relative-position tables), float64. The reference accepts either CLIP normalisation the contract allows (the
official pipeline's 0-255 constants, or open_clip's) and either DINO input (the official ImageNet normalisation of
the CLIP-un-normalised window, or of the window itself); an implementation must match one of these variants
tightly. The variants differ from each other by ~1e-4 on the logits (the proxy attention's -inf cut-off is
discontinuous), far above the tolerances used here.

Sizes: a 60x90 original; test scale short side 112 (112x168: width not a multiple of 16), 100 (100x150) or 120
(120x180 for the /14 tower); slide_crop 112 (a multiple of 56, so the official window padding never fires; 7x7
CLIP and 14x14 DINO tokens per window, both positional tables resampled), SAM grid 10x16 (16x24 in Cityscapes
mode: two 16x12 halves).
"""
from __future__ import annotations

import copy
import functools
import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import trident_reference as R
from proxyclip_pl import Trident
from proxyclip_pl.towers import build_clip, build_vfm
from tiny_models import TINY_CLIP_CONFIG, tiny_clip, tiny_vfm

VOCAB = [["background", "sky"], ["cat"], ["dog"], ["car"]]  # Q = 5, C = 4: only class 0 has synonyms (official layout)
NUM_CLASSES = len(VOCAB)
#: (clip_norm, dino_mode) variants of the reference; the first is the literal official pipeline.
VARIANTS = (("official", "official"), ("openclip", "official"), ("official", "direct"))
# float64 maps with no text involved (window features, SAM affinity); 1e-7 leaves room for float32-rounded
# normalisation constants or inputs (~1e-8), while the allowed variants differ by >= 1e-6 from each other.
TOL_FEATURES = 1e-7
TOL_LOGITS = 1e-6     # float64 logits (the text rows are stored as float32 by the Segmenter: ~1e-8 from the reference)
TOL_FLOAT32 = 1e-4
CROP = 112
ORIGINAL_SHAPE = (60, 90)

DEFAULTS = dict(logit_scale=40.0, prob_thd=0.0, slide_crop=CROP, slide_stride=48, short_side=112, long_side_cap=2048,
                pamr_steps=0, beta=1.2, gamma=3.0, cos_fac=1.2, refine_neg_cos=True, dataset_type="PascalVOCDataset",
                sam_refinement=False, window_batch_size=None)


# --------------------------------------------------------------------------------------------------------------
# Towers, image, text
# --------------------------------------------------------------------------------------------------------------


def make_sam(dtype=torch.float64):
    """Tiny timm samvit (256 px, 16x16 grid, one windowed and one global block, SAM's LayerNorm eps); its
    relative-position tables and absolute positional embedding (zero-initialised by timm) randomised."""
    sam, kind = build_vfm("samvit_base_patch16.sa1b", "random", seed=0, embed_dim=32, depth=2, num_heads=2,
                          global_attn_indexes=(1,), neck_chans=32, img_size=256,
                          norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for block in sam.blocks:
            block.attn.rel_pos_h.copy_(torch.randn(block.attn.rel_pos_h.shape, generator=gen) * 0.5)
            block.attn.rel_pos_w.copy_(torch.randn(block.attn.rel_pos_w.shape, generator=gen) * 0.5)
        sam.pos_embed.copy_(torch.randn(sam.pos_embed.shape, generator=gen) * 0.5)
    return sam.to(dtype).eval()


def make_original(shape=ORIGINAL_SHAPE, seed=0) -> np.ndarray:
    """uint8 RGB with some structure (smooth colour blobs plus noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (5, 7, 3)).astype(np.uint8)
    smooth = cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC).astype(np.int64)
    return np.clip(smooth + rng.integers(-20, 21, (*shape, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    clip16, _ = tiny_clip(tmp_path_factory.mktemp("trident_clip16"))
    folder = tmp_path_factory.mktemp("trident_clip14")
    config = json.loads(json.dumps(TINY_CLIP_CONFIG))
    config["vision_cfg"]["patch_size"] = 14  # ViT-H/14 geometry: 16x16 table, DINO grid not a multiple of CLIP's
    (folder / "tiny_clip14.json").write_text(json.dumps(config))
    clip14, _ = build_clip(str(folder / "tiny_clip14.json"), "random", seed=0)
    return {"clip16": clip16.double().eval(), "clip14": clip14.double().eval(),
            "dino": tiny_vfm("dino").double().eval(), "sam": make_sam()}


@pytest.fixture(scope="module")
def original():
    return make_original()


@pytest.fixture(scope="module")
def text(towers, original):
    """[Q, d] float32 unit rows spread over the image's own embeddings (so the labels vary over the image)."""
    image = R.image_tensor(R.official_test_resize(original, 112))
    emb, _ = R.official_trident_embeddings(towers["clip16"], towers["dino"], towers["sam"], image, original,
                                           slide_crop=CROP, slide_stride=48)
    idx = torch.linspace(0, emb.shape[0] - 1, len(sum(VOCAB, []))).round().long()
    return F.normalize(emb[idx] - emb.mean(0), dim=-1).float()


def make_model(towers, text, clip="clip16", dtype=torch.float64, **overrides):
    kwargs = {**DEFAULTS, **overrides}
    model = Trident(copy.deepcopy(towers[clip]).to(dtype), VOCAB, vfm=copy.deepcopy(towers["dino"]).to(dtype),
                    sam=copy.deepcopy(towers["sam"]).to(dtype), text_embeddings=text, **kwargs)
    return model.to(dtype).eval()


def reference_kwargs(**overrides):
    kwargs = {**DEFAULTS, **overrides}
    return {k: kwargs[k] for k in ("slide_crop", "slide_stride", "beta", "gamma", "cos_fac", "refine_neg_cos",
                                   "dataset_type")}


def best_variant(ours: torch.Tensor, compute, tol: float) -> tuple[float, str, dict[str, float]]:
    """Max-abs difference of ``ours`` to the reference: the first allowed normalisation variant within ``tol``,
    else the closest one (all differences in the returned dict)."""
    diffs = {}
    for clip_norm, dino_mode in VARIANTS:
        ref = compute(clip_norm, dino_mode)
        assert ours.shape == ref.shape, f"shape {tuple(ours.shape)} != reference {tuple(ref.shape)}"
        name = f"{clip_norm}/{dino_mode}"
        diffs[name] = (ours.detach().double().cpu() - ref.double().cpu()).abs().max().item()
        if diffs[name] < tol:
            return diffs[name], name, diffs
    name = min(diffs, key=diffs.get)
    return diffs[name], name, diffs


def fmt(diffs: dict[str, float]) -> str:
    return ", ".join(f"{k}: {v:.3e}" for k, v in diffs.items())


# --------------------------------------------------------------------------------------------------------------
# Window features (custom_attn on one batch of windows)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip,batch,side", [("clip16", 4, 112), ("clip16", 3, 64), ("clip14", 2, 112)])
def test_window_features_match_reference(towers, text, clip, batch, side):
    """[B, D, gh_dino, gw_dino] = out_proj(A v): mu is the mean of S over ALL windows of the batch."""
    gen = torch.Generator().manual_seed(side + batch)
    coarse = torch.rand(batch, 3, side // 8, side // 8, generator=gen, dtype=torch.float64)
    windows = (F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
               + 0.1 * torch.rand(batch, 3, side, side, generator=gen, dtype=torch.float64)).clamp(0, 1)
    model = make_model(towers, text, clip=clip, slide_crop=side, slide_stride=56 if clip == "clip14" else 48)
    with torch.no_grad():
        ours = model.window_features(windows)

    def ref(clip_norm, dino_mode):
        return R.official_window_features(towers[clip], towers["dino"], windows * 255.0, clip_norm=clip_norm,
                                          dino_mode=dino_mode)

    diff, name, diffs = best_variant(ours, ref, TOL_FEATURES)
    assert diff < TOL_FEATURES, f"window_features: best variant {name} max|diff| {diff:.3e} ({fmt(diffs)})"
    # mu over the whole batch, not per window: the per-window version is far away
    per_window = torch.cat([R.official_window_features(towers[clip], towers["dino"], windows[i:i + 1] * 255.0,
                                                       clip_norm=name.split("/")[0], dino_mode=name.split("/")[1])
                            for i in range(batch)])
    gap = (ours.double() - per_window).abs().max().item()
    assert gap > 1e3 * TOL_FEATURES, f"per-window mu is indistinguishable here (max|diff| {gap:.3e})"


# --------------------------------------------------------------------------------------------------------------
# SAM affinity (SamPredictor.set_image + last global attention + get_sam_sim)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset_type,cos_fac,refine_neg_cos", [
    ("PascalVOCDataset", 1.2, True),
    ("PascalVOCDataset", 3.0, False),
    ("PascalVOCDataset", -1.0, False),   # negative thresholds -> 0.6
    ("PascalVOCDataset", -1.0, True),    # negative thresholds kept
    ("PascalVOCDataset", 10.0, True),    # thresholds capped at 0.9
    ("CityscapesDataset", 3.0, False),   # two halves
])
def test_sam_affinity_matches_reference(towers, text, original, dataset_type, cos_fac, refine_neg_cos):
    model = make_model(towers, text, cos_fac=cos_fac, refine_neg_cos=refine_neg_cos, dataset_type=dataset_type)
    with torch.no_grad():
        ours = model.sam_affinity(original)
    refs = R.official_sam_affinity(towers["sam"], original, patch_size=16, cos_fac=cos_fac,
                                   refine_neg_cos=refine_neg_cos, dataset_type=dataset_type)
    assert len(ours) == len(refs), f"{len(ours)} SAM parts, reference {len(refs)}"
    for part, ((a, grid), (a_ref, grid_ref)) in enumerate(zip(ours, refs)):
        assert tuple(grid) == tuple(grid_ref), f"part {part}: grid {tuple(grid)} != reference {grid_ref}"
        assert tuple(a.shape) == tuple(a_ref.shape), f"part {part}: A {tuple(a.shape)} != {tuple(a_ref.shape)}"
        diff = (a.double().cpu() - a_ref).abs().max().item()
        assert diff < TOL_FEATURES, f"part {part}: max|A - A_ref| {diff:.3e} (zeros in reference: " \
                                    f"{(a_ref == 0).double().mean().item():.3f})"


def test_sam_filter_settings_are_exercised(towers, original):
    """The parametrisation above is meaningful: the filter removes entries, and refine_neg_cos / the 0.9 cap
    change A on these weights."""
    def affinity(cos_fac, refine_neg_cos):
        return R.official_sam_affinity(towers["sam"], original, patch_size=16, cos_fac=cos_fac,
                                       refine_neg_cos=refine_neg_cos)[0][0]

    assert (affinity(1.2, True) == 0).any()
    assert not torch.equal(affinity(-1.0, False), affinity(-1.0, True))
    assert not torch.equal(affinity(10.0, True), affinity(3.0, True))


# --------------------------------------------------------------------------------------------------------------
# Whole forward: slide_logits (SAM-grid cosine logits), predict
# --------------------------------------------------------------------------------------------------------------

CASES = {
    # name: (clip, short side, model overrides)
    "voc-p16-112x168": ("clip16", 112, {}),
    "voc-p16-100x150-neg-cos": ("clip16", 100, {"cos_fac": -1.0, "refine_neg_cos": False}),
    "voc-p14-120x180": ("clip14", 120, {"slide_stride": 56}),
    "cityscapes-p16-112x168": ("clip16", 112, {"cos_fac": 3.0, "refine_neg_cos": False,
                                               "dataset_type": "CityscapesDataset"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_slide_logits_match_reference(towers, text, original, case):
    clip, short, overrides = CASES[case]
    resized = R.official_test_resize(original, short)
    image255 = R.image_tensor(resized)
    model = make_model(towers, text, clip=clip, short_side=short, **overrides)
    with torch.no_grad():
        ours = model.slide_logits(image255 / 255.0, original=original)
    assert ours.dim() == 4 and ours.shape[0] == 1, f"slide_logits shape {tuple(ours.shape)}"

    def ref(clip_norm, dino_mode):
        return R.official_trident_logits(towers[clip], towers["dino"], towers["sam"], image255, original, text,
                                         clip_norm=clip_norm, dino_mode=dino_mode,
                                         **reference_kwargs(**overrides))[None]

    diff, name, diffs = best_variant(ours, ref, TOL_LOGITS)
    assert diff < TOL_LOGITS, f"{case}: best variant {name} max|diff| {diff:.3e} ({fmt(diffs)})"
    if overrides.get("dataset_type") == "CityscapesDataset":
        assert tuple(ours.shape[-2:]) == (16, 24), f"Cityscapes grid {tuple(ours.shape[-2:])}: halves side by side"


@pytest.mark.parametrize("prob_thd", ["zero", "quantile"])
def test_predict_matches_reference(towers, text, original, prob_thd):
    """Labels of the whole pipeline (test resize, forward, bilinear to the original size, softmax of 40 x logits,
    class 0 = max over its synonyms, argmax, prob_thd); 'quantile' puts prob_thd in a clear gap between two pixels'
    best probabilities, so that it zeroes 5-30 % of the image."""
    image255 = R.image_tensor(R.official_test_resize(original, 112))
    logits = R.official_trident_logits(towers["clip16"], towers["dino"], towers["sam"], image255, original, text,
                                       **reference_kwargs())
    thd = 0.0
    if prob_thd == "quantile":
        up = F.interpolate(logits[None], size=original.shape[:2], mode="bilinear", align_corners=False)[0]
        probs = (up * 40.0).softmax(0)
        best = torch.cat([probs[:2].max(0, keepdim=True)[0], probs[2:]]).max(0)[0].flatten().sort()[0]
        # the widest gap between neighbouring values among the lower 5-30 % (bilinear borders repeat values; the
        # upper half saturates at 1 with logit_scale 40)
        lo, hi = int(0.05 * best.numel()), int(0.3 * best.numel())
        i = lo + int((best[lo + 1:hi + 1] - best[lo:hi]).argmax())
        assert best[i + 1] - best[i] > 1e-6, "test set-up: no clear gap for prob_thd"
        thd = float((best[i] + best[i + 1]) / 2)
    model = make_model(towers, text, prob_thd=thd)
    with torch.no_grad():
        ours = model.predict(original)
    assert ours.shape == original.shape[:2] and ours.dtype == torch.long, f"{tuple(ours.shape)} {ours.dtype}"
    best_mismatch, details = None, {}
    for clip_norm, dino_mode in VARIANTS:
        ref = R.official_trident_predict(towers["clip16"], towers["dino"], towers["sam"], image255, original, text,
                                         num_classes=NUM_CLASSES, logit_scale=40.0, prob_thd=thd,
                                         clip_norm=clip_norm, dino_mode=dino_mode, **reference_kwargs())
        if clip_norm == "official" and dino_mode == "official":
            assert len(ref.unique()) >= 3, f"test set-up: reference labels {ref.unique().tolist()} do not vary"
            unthresholded = R.official_postprocess(logits, original.shape[:2], NUM_CLASSES, 40.0, 0.0)
            changed = (ref != unthresholded).double().mean().item()
            assert (changed > 0.02) == (prob_thd == "quantile"), f"test set-up: prob_thd changes {changed:.3f}"
        mismatch = int((ours.cpu() != ref).sum())
        details[f"{clip_norm}/{dino_mode}"] = mismatch
        best_mismatch = mismatch if best_mismatch is None else min(best_mismatch, mismatch)
        if mismatch == 0:
            break
    assert best_mismatch == 0, f"predict: pixels differing from the reference per variant: {details}"


def test_window_batch_size_does_not_change_results(towers, text, original):
    """mu is the mean over all windows of the image whatever the memory bound."""
    image = R.image_tensor(R.official_test_resize(original, 112)) / 255.0
    outs = []
    for wbs in (None, 1):
        model = make_model(towers, text, window_batch_size=wbs)
        with torch.no_grad():
            outs.append(model.slide_logits(image, original=original))
    diff = (outs[1] - outs[0]).abs().max().item()
    assert diff <= 1e-12, f"window_batch_size=1 vs None: max|diff| {diff:.3e}"


def test_float32_slide_logits_match_reference(towers, text, original):
    """The acceptance set-up (float32, CPU): the same forward in float32 stays within float32 noise."""
    resized = R.official_test_resize(original, 112)
    t32 = {k: copy.deepcopy(v).float() for k, v in towers.items()}
    model = make_model(t32, text, dtype=torch.float32)
    with torch.no_grad():
        ours = model.slide_logits(R.image_tensor(resized, torch.float32) / 255.0, original=original)

    def ref(clip_norm, dino_mode):
        return R.official_trident_logits(t32["clip16"], t32["dino"], t32["sam"], R.image_tensor(resized, torch.float32),
                                         original, text, clip_norm=clip_norm, dino_mode=dino_mode,
                                         **reference_kwargs())[None]

    diff, name, diffs = best_variant(ours, ref, TOL_FLOAT32)
    assert diff < TOL_FLOAT32, f"float32: best variant {name} max|diff| {diff:.3e} ({fmt(diffs)})"


def test_sam_refinement_is_refused(towers, text):
    with pytest.raises(ValueError):
        make_model(towers, text, sam_refinement=True)
