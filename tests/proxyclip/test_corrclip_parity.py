"""CorrCLIP (``proxyclip_pl.CorrCLIP``) against the literal transcription of the official forward in
``tests/corrclip_reference.py`` (zdk258/CorrCLIP @ 103bc18, CorrCLIPv1), on tiny seeded random towers with FIXED
region label maps given to both sides; plus the mask helpers of the contract (docs: /work/shared/contracts/corrclip.md).

Input convention: the contract accepts the x255-rounded mmseg or the exact open_clip constants for the CLIP input,
the official DINO input being the CLIP input un-normalised with the open_clip constants. Those choices move
``S > mean(S)`` decisions of the scope reconstruction (up to ~1e-4 in the logits), so every parity check compares
against both :data:`corrclip_reference.CONTRACT_VARIANTS` and one must match ("closer reference wins"); failure
messages also list the diagnostic variants (CLIP x255 constants with DINO fed the [0, 1] window).
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from proxyclip_pl import CorrCLIP, InstanceMaskFolder, SAM2MaskProvider, instance_map_from_masks

import corrclip_reference as ref
from tiny_models import TINY_CLIP_CONFIG, tiny_clip, tiny_vfm

VOCAB = [["sky", "cloud"], ["cat"], ["dog"], ["grass"]]  # only class 0 has synonyms (as the official files)
QUERY_IDX = [0, 0, 1, 2, 3]
NUM_SPATIAL = 1  # the tiny CLIP has 3 blocks: the official default (depth - 4 = -1) leaves no spatial block
TOL64 = 1e-7  # an exact float64 port is ~1e-9 away (the text rows are float32-rounded)
TOL32 = 1e-4
CONSTANTS = {"alpha": 1.0, "beta": 0.5, "tau": 4.0, "dbscan_eps": 0.2}


# --------------------------------------------------------------------------------------------------- data
def scene(height: int, width: int, ids, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 RGB image of Voronoi cells (one colour + noise per cell) and its int64 label map (ids = ``ids``)."""
    gen = np.random.default_rng(seed)
    centres = gen.uniform(0, 1, (len(ids), 2)) * [height, width]
    yy, xx = np.mgrid[0:height, 0:width]
    cell = (((yy[None] - centres[:, 0, None, None]) ** 2) + ((xx[None] - centres[:, 1, None, None]) ** 2)).argmin(0)
    colours = gen.uniform(0, 255, (len(ids), 3))
    image = np.clip(colours[cell] + 20 * gen.standard_normal((height, width, 3)), 0, 255).astype(np.uint8)
    return image, np.asarray(ids, dtype=np.int64)[cell]


IMAGE, LABELS = scene(240, 320, [0, 3, 7, 12, 40, 41, 55, 60], seed=3)
#: (y, x, h, w) windows of the scene: plain, non-square with a CLIP grid that floors (168 / 16), sides not a
#: multiple of 56 (padded, mask id 10000), the towers' native 224 (no positional interpolation), no id 0.
WINDOWS = {
    "112x112": (0, 0, 112, 112),
    "112x168": (10, 20, 112, 168),
    "100x140-padded": (30, 40, 100, 140),
    "224x224-native": (0, 0, 224, 224),
    "no-id-0": (100, 150, 112, 112),
}


def to01(image: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].to(dtype) / 255.0


def window_and_mask(name: str, dtype=torch.float64):
    y, x, h, w = WINDOWS[name]
    return to01(IMAGE[y:y + h, x:x + w], dtype), torch.from_numpy(LABELS[y:y + h, x:x + w].copy())


def as_numpy(labels) -> np.ndarray:
    return labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)


# ------------------------------------------------------------------------------------------------ towers
@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    clip, _ = tiny_clip(tmp_path_factory.mktemp("corrclip_clip"))
    return clip, tiny_vfm("dino")


@pytest.fixture(scope="module")
def text(towers):
    raw = torch.randn(len(QUERY_IDX), towers[0].text_projection.shape[1], generator=torch.Generator().manual_seed(1),
                      dtype=torch.float64)
    return F.normalize(raw, dim=-1).float()  # correctly rounded unit rows: both sides normalise to the same values


def make(towers, text, dtype=torch.float64, **kwargs) -> CorrCLIP:
    clip, dino = (copy.deepcopy(m).to(dtype) for m in towers)
    options = {"text_embeddings": text, "num_spatial": NUM_SPATIAL, "logit_scale": 40.0, "prob_thd": 0.0,
               "slide_crop": 112, "slide_stride": 56, "short_side": 112, **CONSTANTS}
    options.update(kwargs)
    return CorrCLIP(clip, VOCAB, vfm=dino, **options).to(dtype)


@pytest.fixture(scope="module")
def model64(towers, text):
    return make(towers, text)


@pytest.fixture(scope="module")
def ref64(towers):
    return tuple(copy.deepcopy(m).double().eval() for m in towers)


def assert_matches_a_variant(ours: torch.Tensor, compute, tol: float, label: str) -> None:
    """``ours`` within ``tol`` (max abs) of the reference under one of the contract's input variants
    (:data:`corrclip_reference.CONTRACT_VARIANTS`, literal official first); on failure the message lists the max abs
    difference to every variant, the diagnostic ones included."""
    diffs = {}
    for name in ref.CONTRACT_VARIANTS + tuple(k for k in ref.INPUT_VARIANTS if k not in ref.CONTRACT_VARIANTS):
        theirs = compute(ref.INPUT_VARIANTS[name])
        assert theirs.shape == ours.shape, (label, name, tuple(theirs.shape), tuple(ours.shape))
        diffs[name] = (ours.double().cpu() - theirs.double().cpu()).abs().max().item()
        if name in ref.CONTRACT_VARIANTS and diffs[name] < tol:
            return
    shown = ", ".join(f"{k}: {v:.3e}" for k, v in diffs.items())
    raise AssertionError(f"{label}: max abs diff above {tol:g} to both contract references ({shown})")


def ref_window(ref_towers, text, window, mask, variant, **kwargs):
    options = {"num_spatial": NUM_SPATIAL, **CONSTANTS, **kwargs}
    return ref.official_window_logits(*ref_towers, window, mask, text, **variant, **options)


# ------------------------------------------------------------------------------- the reference itself
def test_reference_dbscan_is_connected_components_of_d_le_eps():
    from scipy.sparse.csgraph import connected_components

    gen = torch.Generator().manual_seed(0)
    for trial in range(30):
        n = 2 + trial % 9
        f = F.normalize(torch.randn(n, 4, generator=gen, dtype=torch.float64), dim=1)
        sim = f @ f.T
        dist = sim.max() - sim
        eps = [0.05, 0.2, 0.6][trial % 3]
        ours = ref.dbscan_min_samples_1(dist, eps).numpy()
        count, theirs = connected_components((dist <= eps).numpy(), directed=False)
        assert (ours >= 0).all() and len(set(ours)) == count
        # same partition, labels numbered by first appearance (sklearn's order)
        first = {c: i for i, c in reversed(list(enumerate(theirs)))}
        order = {c: rank for rank, c in enumerate(sorted(first, key=first.get))}
        assert ours.tolist() == [order[c] for c in theirs]
    # a chain a-b-c with d(a, c) > eps is one cluster
    chain = torch.tensor([[0.0, 0.15, 0.3], [0.15, 0.0, 0.15], [0.3, 0.15, 0.0]], dtype=torch.float64)
    assert ref.dbscan_min_samples_1(chain, 0.2).tolist() == [0, 0, 0]


def test_reference_masked_block_matches_open_clip_attention(ref64):
    """The hand-written block equals nn.MultiheadAttention given the official *bool* mask (True = blocked) and the
    open_clip 3.x block given the equivalent additive ``-inf`` mask."""
    clip, _ = ref64
    blk = clip.visual.transformer.resblocks[0]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, blk.attn.embed_dim, generator=gen, dtype=torch.float64)
    allowed = torch.rand(12, 12, generator=gen) < 0.5
    allowed |= torch.eye(12, dtype=torch.bool)
    ours = ref.masked_block(blk, x, allowed)
    u = blk.ln_1(x)[None]
    attn = blk.attn(u, u, u, need_weights=False, attn_mask=~allowed)[0][0]
    literal = x + attn
    literal = literal + blk.mlp(blk.ln_2(literal))
    additive = torch.zeros(12, 12, dtype=torch.float64).masked_fill(~allowed, float("-inf"))
    block = blk(x[None], attn_mask=additive)[0]
    assert (ours - literal).abs().max().item() < 1e-12
    assert (ours - block).abs().max().item() < 1e-12


def test_reference_num_spatial_rule():
    assert [ref.official_num_spatial(d) for d in (12, 24, 32, 6, 3)] == [5, 12, 28, 2, -1]
    assert ref.spatial_block_indices(12, 5) == [5, 6, 7, 8, 9]
    assert ref.spatial_block_indices(24, 12) == list(range(10, 22))
    assert ref.spatial_block_indices(3, 1) == [0]
    assert ref.spatial_block_indices(3, -1) == []  # the official torch.stack([]) raises


def test_reference_shallow_tower_without_num_spatial_raises_like_official(ref64, text):
    window, mask = window_and_mask("112x112")
    with pytest.raises(RuntimeError):
        ref.official_window_logits(*ref64, window, mask, text, num_spatial=None)


def test_fixture_windows_exercise_mask_merging(ref64, text):
    """The fixed masks reach every branch: > 2 ids with DBSCAN merging some (not all) regions, padding id 10000,
    a smallest id other than 0."""
    merged_some = False
    for name in WINDOWS:
        window, mask = window_and_mask(name)
        trace = {}
        ref_window(ref64, text, window, mask, ref.INPUT_VARIANTS["official"], trace=trace)
        before, after = torch.unique(trace["dino_masks_before"]), torch.unique(trace["dino_masks"])
        assert len(before) > 2 and len(after) >= 2, name
        merged_some |= 2 < len(after) < len(before)
        if name == "no-id-0":
            assert before.min().item() == 3 and after.min().item() == 3
        if name == "100x140-padded":
            assert ref.PAD_ID in before.tolist()
    assert merged_some


# ------------------------------------------------------------------------------------------ contract surface
def test_constructor_defaults_are_the_official_constants():
    import inspect

    expected = {"logit_scale": 40.0, "prob_thd": 0.0, "slide_crop": 336, "slide_stride": 112, "short_side": 336,
                "alpha": 1.0, "beta": 0.5, "tau": 4.0, "num_spatial": None, "dbscan_eps": 0.2, "mask_provider": None,
                "pamr_steps": 0, "instance_mask_path": None}
    got = {}
    for cls in CorrCLIP.__mro__:  # keywords forwarded to a base class (**kwargs) take that class's default
        if "__init__" not in vars(cls) or cls is torch.nn.Module:
            continue
        for key, param in inspect.signature(cls.__init__).parameters.items():
            if key in expected and key not in got and param.default is not inspect.Parameter.empty:
                got[key] = param.default
    assert got == expected


def test_text_embeddings_shape(model64, text):
    assert tuple(model64.text_embeddings.shape) == tuple(text.shape)
    assert (model64.text_embeddings.double().cpu() - text.double()).abs().max().item() < 1e-7


# ------------------------------------------------------------------------------------------------ windows
@pytest.mark.parametrize("name", list(WINDOWS))
def test_window_logits_match_official_float64(model64, ref64, text, name):
    window, mask = window_and_mask(name)
    ours = model64.window_logits(window, mask[None].long())
    assert ours.shape == (1, len(QUERY_IDX), *window.shape[-2:]) and ours.dtype == torch.float64
    assert_matches_a_variant(ours, lambda v: ref_window(ref64, text, window, mask, v), TOL64, name)


@pytest.mark.parametrize("mask_kind", ["uniform", "two-ids"])
def test_window_logits_without_merging(model64, ref64, text, mask_kind):
    """One id (only the smallest-id branch of the scope, K = 1 region token) and two ids (no merging)."""
    window, mask = window_and_mask("112x168")
    mask = torch.full_like(mask, 7)
    if mask_kind == "two-ids":
        mask[:, 80:] = 9
    ours = model64.window_logits(window, mask[None].long())
    assert_matches_a_variant(ours, lambda v: ref_window(ref64, text, window, mask, v), TOL64, mask_kind)


@pytest.mark.parametrize("options", [
    {"alpha": 0.3, "beta": 1.7, "tau": 2.0},
    {"dbscan_eps": 0.0},   # no merging
    {"dbscan_eps": 2.5},   # everything but the smallest id merges
])
def test_window_logits_pass_the_constants_through(towers, ref64, text, options):
    model = make(towers, text, **options)
    window, mask = window_and_mask("112x168")
    ours = model.window_logits(window, mask[None].long())
    assert_matches_a_variant(ours, lambda v: ref_window(ref64, text, window, mask, v, **options), TOL64, str(options))
    default = ref_window(ref64, text, window, mask, ref.INPUT_VARIANTS["official"])
    changed = ref_window(ref64, text, window, mask, ref.INPUT_VARIANTS["official"], **options)
    assert (default - changed).abs().max().item() > 1e-4, "the option does not change the reference here"


def test_window_logits_float32_match_official(towers, ref64, text):
    model = make(towers, text, dtype=torch.float32)
    for name in ("112x168", "100x140-padded"):
        window, mask = window_and_mask(name, torch.float32)
        ours = model.window_logits(window, mask[None].long())
        assert ours.dtype == torch.float32
        assert_matches_a_variant(ours, lambda v: ref_window(ref64, text, window.double(), mask, v), TOL32,
                                 f"{name} (float32 vs float64 reference)")


def test_window_logits_batch_invariant(towers, text):
    names = ["112x112", "no-id-0"]
    crops = [window_and_mask(n) for n in names]
    _, extra = window_and_mask("112x168")
    crops.append((crops[0][0].flip(-1), extra[:112, :112].clone()))
    windows = torch.cat([w for w, _ in crops])
    masks = torch.stack([m for _, m in crops]).long()
    for batch_size in (1, 3):
        model = make(towers, text, window_batch_size=batch_size)
        together = model.window_logits(windows, masks)
        alone = torch.cat([model.window_logits(windows[i:i + 1], masks[i:i + 1]) for i in range(len(crops))])
        diff = (together - alone).abs().max().item()
        assert diff < 1e-10, f"window_batch_size={batch_size}: batched vs one at a time max abs diff {diff:.3e}"


def test_window_logits_batch_invariant_padded(towers, text):
    """Windows whose sides are not multiples of 56 (padded with id 10000), several in one batch."""
    model = make(towers, text)
    window, mask = window_and_mask("100x140-padded")
    windows = torch.cat([window, window.flip(-2)])
    masks = torch.stack([mask, mask.flip(-2)]).long()
    together = model.window_logits(windows, masks)
    alone = torch.cat([model.window_logits(windows[i:i + 1], masks[i:i + 1]) for i in range(2)])
    diff = (together - alone).abs().max().item()
    assert diff < 1e-10, f"batched vs one at a time max abs diff {diff:.3e}"


# ----------------------------------------------------------------------------------------- num_spatial default
@pytest.mark.parametrize("depth", [6, 12])
def test_num_spatial_default_follows_official_rule(tmp_path, ref64, text, depth):
    """``num_spatial=None``: 5 for 12 blocks, ``depth - 4`` otherwise (checked by behaviour on deeper towers)."""
    from proxyclip_pl.towers import build_clip

    config = copy.deepcopy(TINY_CLIP_CONFIG)
    config["vision_cfg"]["layers"] = depth
    path = tmp_path / f"tiny_clip_{depth}.json"
    path.write_text(json.dumps(config))
    clip, _ = build_clip(str(path), "random", seed=0)
    dino = copy.deepcopy(ref64[1])
    towers = (clip.double(), dino)
    model = make(towers, text, num_spatial=None)
    window, mask = window_and_mask("112x112")
    ours = model.window_logits(window, mask[None].long())
    assert_matches_a_variant(ours, lambda v: ref_window(towers, text, window, mask, v, num_spatial=None), TOL64,
                             f"depth {depth}")
    other = ref_window(towers, text, window, mask, ref.INPUT_VARIANTS["official"], num_spatial=1)
    default = ref_window(towers, text, window, mask, ref.INPUT_VARIANTS["official"], num_spatial=None)
    assert (other - default).abs().max().item() > 1e-4


# ----------------------------------------------------------------------------------------------- slide
@pytest.mark.parametrize("crop,stride", [(112, 56), (100, 50)])
def test_slide_logits_match_official(ref64, towers, text, crop, stride):
    """Resized image 112x149, label map at the original 84x112 (resized with torch nearest inside)."""
    from datamodules.resize import resize_short_side

    image, labels = IMAGE[:84, :112], LABELS[:84, :112]
    resized = to01(resize_short_side(image, 112))
    assert resized.shape[-2:] == (112, 149)
    model = make(towers, text, slide_crop=crop, slide_stride=stride, window_batch_size=2)
    ours = model.slide_logits(resized, masks=torch.from_numpy(labels))
    assert ours.shape == (1, len(QUERY_IDX), 112, 149)
    options = {"num_spatial": NUM_SPATIAL, **CONSTANTS}
    assert_matches_a_variant(ours, lambda v: ref.official_slide_logits(
        *ref64, resized, labels, text, slide_crop=crop, slide_stride=stride, **v, **options),
        TOL64, f"crop {crop}/{stride}")


def test_slide_logits_accept_bool_masks(model64):
    from datamodules.resize import resize_short_side

    labels = LABELS[:84, :112]
    ids = [i for i in np.unique(labels) if i != 0]
    bool_masks = np.stack([labels == i for i in ids])
    resized = to01(resize_short_side(IMAGE[:84, :112], 112))
    a = model64.slide_logits(resized, masks=bool_masks)
    b = model64.slide_logits(resized, masks=torch.from_numpy(as_numpy(instance_map_from_masks(bool_masks))))
    assert (a - b).abs().max().item() == 0


# --------------------------------------------------------------------------------------------- predict
def ref_predict(ref_towers, text, image, labels, variant, *, prob_thd=0.0, crop=112, stride=56):
    from datamodules.resize import resize_short_side

    resized = to01(resize_short_side(image, 112))
    return ref.official_predict(*ref_towers, resized, labels, text, QUERY_IDX, ori_size=image.shape[:2],
                                logit_scale=40.0, prob_thd=prob_thd, slide_crop=crop, slide_stride=stride,
                                num_spatial=NUM_SPATIAL, **CONSTANTS, **variant)


def assert_labels_match(ours, ref_towers, text, image, labels, **kwargs):
    ours = as_numpy(ours)
    assert ours.shape == image.shape[:2]
    mismatches = {}
    for name in ref.CONTRACT_VARIANTS + tuple(k for k in ref.INPUT_VARIANTS if k not in ref.CONTRACT_VARIANTS):
        theirs = as_numpy(ref_predict(ref_towers, text, image, labels, ref.INPUT_VARIANTS[name], **kwargs))
        mismatches[name] = int((theirs != ours).sum())
        if name in ref.CONTRACT_VARIANTS and mismatches[name] == 0:
            return
    raise AssertionError(f"pixels (of {ours.size}) differing from each reference variant: {mismatches}")


@pytest.mark.parametrize("prob_thd", [0.0, 0.99])
def test_predict_matches_official(towers, ref64, text, prob_thd):
    image, labels = IMAGE[:84, :112], LABELS[:84, :112]
    model = make(towers, text, prob_thd=prob_thd)
    ours = model.predict(image, masks=torch.from_numpy(labels))
    assert torch.is_tensor(ours) and ours.dtype == torch.long
    assert_labels_match(ours, ref64, text, image, labels, prob_thd=prob_thd)
    # map correction: every region but the smallest id is one class
    ours = as_numpy(ours)
    for i in np.unique(labels)[1:]:
        assert len(np.unique(ours[labels == i])) == 1


def test_predict_threshold_is_exercised(ref64, text):
    """The 0.99 threshold of the test above sends some (not all) pixels to class 0 before map correction."""
    from datamodules.resize import resize_short_side

    image, labels = IMAGE[:84, :112], LABELS[:84, :112]
    resized = to01(resize_short_side(image, 112))
    logits = ref.official_slide_logits(*ref64, resized, labels, text, slide_crop=112, slide_stride=56,
                                       num_spatial=NUM_SPATIAL, **CONSTANTS)
    prob = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)[0].mul(40).softmax(0)
    best = torch.cat([prob[:2].max(0, keepdim=True)[0], prob[2:]]).max(0)[0]
    frac = (best < 0.99).double().mean().item()
    assert 0.02 < frac < 0.98, frac


def test_predict_other_sizes_and_padding(towers, ref64, text):
    """An original size that resizes to a non-multiple of the window (flush last window), windows padded to 56."""
    image, labels = scene(70, 130, [2, 5, 9, 11, 13], seed=7)
    model = make(towers, text, slide_crop=100, slide_stride=50)
    ours = model.predict(image, masks=labels)
    assert_labels_match(ours, ref64, text, image, labels, crop=100, stride=50)


def test_predict_with_mask_provider_called_once(towers, ref64, text):
    image, labels = IMAGE[:84, :112], LABELS[:84, :112]
    calls = []

    def provider(img, image_id):
        calls.append((np.array(img, copy=True), image_id))
        return labels

    model = make(towers, text, mask_provider=provider)
    ours = model.predict(image, image_id="img_001")
    assert len(calls) == 1 and calls[0][1] == "img_001" and np.array_equal(calls[0][0], image)
    assert_labels_match(ours, ref64, text, image, labels)
    given = model.predict(image, masks=labels)
    assert len(calls) == 1, "masks= must take precedence over the provider"
    assert np.array_equal(as_numpy(given), as_numpy(ours))
    positional = model.predict(image, labels, "img_001")  # the contract's order: predict(image, masks, image_id)
    assert len(calls) == 1 and np.array_equal(as_numpy(positional), as_numpy(ours))


def test_predict_bool_masks_equal_painted_label_map(model64):
    image = IMAGE[:84, :112]
    labels = LABELS[:84, :112]
    bool_masks = np.stack([labels == i for i in np.unique(labels) if i != 0])
    a = as_numpy(model64.predict(image, masks=bool_masks))
    b = as_numpy(model64.predict(image, masks=instance_map_from_masks(bool_masks)))
    assert np.array_equal(a, b)


def test_predict_without_masks_or_provider_raises(model64):
    with pytest.raises((ValueError, RuntimeError)):
        model64.predict(IMAGE[:84, :112])


# ------------------------------------------------------------------------------------------- mask helpers
def test_instance_map_from_masks_area_ascending_stable():
    m = np.zeros((4, 4, 6), dtype=bool)
    m[0, :2, :3] = True          # area 6
    m[1, 1:3, 1:3] = True        # area 4
    m[2, 2:4, 3:6] = True        # area 6 (ties with mask 0: keeps input order)
    m[3, 3, 0] = True            # area 1
    anns = [{"segmentation": s, "area": int(s.sum())} for s in m]
    expected = ref.official_sam2_label_map(anns, (4, 6))
    # hand check: order by area = [3, 1, 0, 2] -> ids 1, 2, 3, 4; later (larger) overwrite
    hand = np.zeros((4, 6), dtype=np.int64)
    hand[m[3]] = 1
    hand[m[1]] = 2
    hand[m[0]] = 3
    hand[m[2]] = 4
    assert np.array_equal(expected, hand)
    for masks in (m, torch.from_numpy(m)):
        out = instance_map_from_masks(masks)
        assert as_numpy(out).dtype == np.int64 and as_numpy(out).shape == (4, 6)
        assert np.array_equal(as_numpy(out), hand)


def test_instance_mask_folder_reads_npz_and_names_missing_image(tmp_path):
    labels = LABELS[:84, :112].astype(np.int32)
    np.savez(tmp_path / "2008_000123.npz", instance_mask=labels)
    provider = InstanceMaskFolder(tmp_path)
    out = provider(IMAGE[:84, :112], "2008_000123")
    assert np.array_equal(as_numpy(out), labels)
    with pytest.raises(Exception) as info:
        provider(IMAGE[:84, :112], "2008_999999")
    message = str(info.value)
    assert "2008_999999" in message and "\n" not in message.strip(), message


def test_instance_mask_path_shortcut(towers, text, tmp_path):
    image, labels = IMAGE[:84, :112], LABELS[:84, :112]
    np.savez(tmp_path / "sample.npz", instance_mask=labels.astype(np.int32))
    model = make(towers, text, instance_mask_path=str(tmp_path))
    a = as_numpy(model.predict(image, image_id="sample"))
    b = as_numpy(model.predict(image, masks=labels))
    assert np.array_equal(a, b)


class FakeGenerator:
    def __init__(self, anns):
        self.anns, self.calls = anns, []

    def generate(self, rgb):
        self.calls.append(np.array(rgb, copy=True))
        return self.anns


def test_sam2_mask_provider_paints_like_official():
    image = IMAGE[:84, :112]
    labels = LABELS[:84, :112]
    anns = []
    for k, i in enumerate(np.unique(labels)):
        seg = labels == i
        anns.append({"segmentation": seg, "area": int(seg.sum()), "predicted_iou": 0.9 - 0.01 * k,
                     "stability_score": 0.95, "bbox": [0, 0, 1, 1], "point_coords": [[0.0, 0.0]],
                     "crop_box": [0, 0, 112, 84]})
    anns.append({"segmentation": labels == 7, "area": int((labels == 7).sum()), "predicted_iou": 0.5})  # duplicate area
    generator = FakeGenerator(anns)
    out = SAM2MaskProvider(generator)(image, "x")
    assert len(generator.calls) == 1 and np.array_equal(generator.calls[0], image)
    expected = ref.official_sam2_label_map(anns, labels.shape)
    assert as_numpy(out).dtype == np.int64 and np.array_equal(as_numpy(out), expected)
    empty = SAM2MaskProvider(FakeGenerator([]))(image, None)
    assert as_numpy(empty).shape == labels.shape and not as_numpy(empty).any()
