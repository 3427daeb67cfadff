"""A literal, unbatched transcription of the OFFICIAL CorrCLIP inference (test reference only).

Source read: GitHub ``zdk258/CorrCLIP`` at commit ``103bc18213e6d906e55a21b8491bc7b04cbf106b``, folder
``CorrCLIPv1/``: ``corrclip_segmentor.py`` (``CorrCLIPSegmentation.forward_feature`` / ``forward_slide`` /
``predict`` / ``postprocess_result`` / ``generate_mask`` / ``compute_padsize``), the CorrCLIP
``VisionTransformer.forward`` + ``interpolate_pos_encoding`` of its vendored ``open_clip/transformer.py``,
``myutils.UnNormalize`` and ``configs/``. DINO's own ``prepare_tokens`` / ``interpolate_pos_encoding``
(facebookresearch/dino, loaded by the official code through ``torch.hub``) are transcribed for the timm tower.

Written independently of :mod:`proxyclip_pl` (nothing is imported from the package): the same operations in
the same order, on our towers (an open_clip 3.x ``CLIP`` with a ViT ``visual`` and a timm DINO
``VisionTransformer``), one window at a time (the official semantic branch only supports batch 1), in the
towers' dtype (float64 works: every op follows the weights' dtype; the official code runs in fp16 on GPU).

Deliberate deviations (none changes the math):

* the official code passes a *bool* attention mask to ``nn.MultiheadAttention`` through its vendored
  ``ResidualAttentionBlock`` (True = not allowed). open_clip 3.x casts any mask to the query dtype (a bool
  mask would become an additive 0/1 mask), so here the masked blocks are written out by hand
  (:func:`masked_block`), applying the mask as ``-inf`` scores;
* sklearn's ``DBSCAN(metric="precomputed", min_samples=1)`` is replaced by :func:`dbscan_min_samples_1`, a
  transcription of sklearn's ``dbscan_inner`` (neighbourhoods ``D[i] <= eps``, every point a core point,
  depth-first expansion in index order, labels numbered in order of their first point) -- sklearn is not a
  dependency of this project;
* the official text side (80-template ensemble, unit rows) is replaced by given ``text_embeddings`` [Q, d]
  (normalised here, which is a no-op for unit rows).

Inputs: the official ``forward_feature`` receives a window normalised by mmseg's ``SegDataPreProcessor``
(``(x255 - MMSEG_MEAN) / MMSEG_STD``, RGB), already padded (zeros = the mean colour) to a multiple of 56, and
its crop of the instance label map padded with id 10000. The DINO input is derived from it inside
``forward_feature``: ``UnNormalize(OPENCLIP_MEAN, OPENCLIP_STD)`` then ImageNet ``Normalize``.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: mmseg SegDataPreProcessor constants of the official segmentor (0-255 RGB).
MMSEG_MEAN = (122.771, 116.746, 104.094)
MMSEG_STD = (68.501, 66.632, 70.323)
#: open_clip constants used by the official ``UnNormalize`` (and the alternative CLIP normalisation).
OPENCLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENCLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: torchvision ``Normalize`` of the DINO input.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: windows are padded to a multiple of this (``compute_padsize(H, W, 56)``); masks padded with this id.
PAD_MULTIPLE = 56
PAD_ID = 10000


# ------------------------------------------------------------------------------------------- constants
def official_num_spatial(depth: int) -> int:
    """``NUM_SPATIAL`` of the official forward: 12 blocks -> 5, 24 -> 12, 32 -> 28, otherwise ``depth - 4``.

    The spatial branch averages blocks ``depth-2-NUM_SPATIAL .. depth-3`` (0-based); for ``depth <= 4`` that
    range is empty and the official ``torch.stack([])`` raises (pass ``num_spatial`` explicitly then).
    """
    return {12: 5, 24: 12, 32: 28}.get(depth, depth - 4)


def spatial_block_indices(depth: int, num_spatial: int) -> list[int]:
    """0-based indices of the blocks whose (CLS + patch) outputs the spatial branch averages."""
    return [idx for idx in range(depth - 1) if depth - 2 - num_spatial <= idx <= depth - 3]


# ------------------------------------------------------------------------------------------- inputs
def _chan(values, ref: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=ref.dtype, device=ref.device).view(1, 3, 1, 1)


def clip_normalize(image01: torch.Tensor, mode: str = "mmseg") -> torch.Tensor:
    """[B, 3, h, w] RGB in [0, 1] -> the official CLIP input.

    ``mode="mmseg"``: the official ``SegDataPreProcessor`` on 0-255 values; ``mode="openclip"``: the exact open_clip
    constants on [0, 1] values (the contract accepts either; with it the official un-normalisation returns
    the [0, 1] image exactly, up to rounding).
    """
    if mode == "mmseg":
        return (image01 * 255.0 - _chan(MMSEG_MEAN, image01)) / _chan(MMSEG_STD, image01)
    if mode == "openclip":
        return (image01 - _chan(OPENCLIP_MEAN, image01)) / _chan(OPENCLIP_STD, image01)
    raise ValueError(f"unknown CLIP normalisation {mode!r}")


def dino_input(window: torch.Tensor) -> torch.Tensor:
    """Official ``self.norm(self.unnorm(img[i]))``: ``x * OPENCLIP_STD + OPENCLIP_MEAN`` per channel (in place on
    a clone), then ``(x - IMAGENET_MEAN) / IMAGENET_STD``."""
    x = window * _chan(OPENCLIP_STD, window) + _chan(OPENCLIP_MEAN, window)
    return (x - _chan(IMAGENET_MEAN, window)) / _chan(IMAGENET_STD, window)


def compute_padsize(height: int, width: int, multiple: int = PAD_MULTIPLE) -> tuple[int, int, int, int]:
    """Official ``compute_padsize``: (left, right, top, bottom), left/top = deficit // 2."""
    left = right = top = bottom = 0
    if width % multiple:
        lr = multiple - width % multiple
        left, right = lr // 2, lr - lr // 2
    if height % multiple:
        tb = multiple - height % multiple
        top, bottom = tb // 2, tb - tb // 2
    return left, right, top, bottom


def _as_mask4d(mask) -> torch.Tensor:
    mask = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask)
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    return mask.to(torch.int32)  # official: ``instance_masks.int()``


# ------------------------------------------------------------------------------------------- DINO
def official_dino_pos(dino: nn.Module, num_tokens: int, height: int, width: int) -> torch.Tensor:
    """DINO ``interpolate_pos_encoding(x, w, h)`` with ``w, h = x.shape[2:]`` (so its ``w`` is the height):
    unchanged when the patch count equals the table's and the input is square, else bicubic with
    ``scale_factor = ((H//p + 0.1)/sqrt(N), (W//p + 0.1)/sqrt(N))``."""
    pos = dino.pos_embed  # [1, 1 + N, C]
    patch = _dino_patch(dino)
    npatch, n = num_tokens - 1, pos.shape[1] - 1
    if npatch == n and height == width:
        return pos
    class_pos = pos[:, 0]
    patch_pos = pos[:, 1:]
    dim = pos.shape[-1]
    h0, w0 = height // patch + 0.1, width // patch + 0.1
    side = int(math.sqrt(n))
    patch_pos = F.interpolate(patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2),
                              scale_factor=(h0 / math.sqrt(n), w0 / math.sqrt(n)), mode="bicubic")
    assert int(h0) == patch_pos.shape[-2] and int(w0) == patch_pos.shape[-1]
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((class_pos.unsqueeze(0), patch_pos), dim=1)


def _dino_patch(dino: nn.Module) -> int:
    size = dino.patch_embed.patch_size
    size = size if isinstance(size, int) else size[0]
    return int(size)


@torch.no_grad()
def official_dino_features(dino: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """DINO features of the official ``forward_feature``: ``q + k`` of the last block's ``attn.qkv`` output (its
    forward hook; input = ``norm1`` of the tokens entering the last block), CLS dropped, L2-normalised.

    Args:
        x: [B, 3, H, W] ImageNet-normalised (:func:`dino_input`).
    Returns:
        [B, (H//p)*(W//p), C] and ``feat_shape = (H//p, W//p)``.
    """
    assert getattr(dino, "num_prefix_tokens", 1) == 1 and not getattr(dino, "no_embed_class", False)
    patch = _dino_patch(dino)
    b, _, height, width = x.shape
    x = x.to(dino.pos_embed.dtype)
    t = dino.patch_embed.proj(x).flatten(2).transpose(1, 2)  # DINO PatchEmbed: proj, flatten, transpose
    t = torch.cat((dino.cls_token.expand(b, -1, -1), t), dim=1)
    t = t + official_dino_pos(dino, t.shape[1], height, width)
    for blk in dino.blocks[:-1]:  # pos_drop is the identity in eval
        t = blk(t)
    last = dino.blocks[-1]
    qkv = last.attn.qkv(last.norm1(t))  # the hooked output [B, L, 3C]
    nb_im, nb_tokens = qkv.shape[:2]
    qkv = qkv.reshape(nb_im, nb_tokens, 3, -1).permute(2, 0, 1, 3)
    feats = qkv[0] + qkv[1]
    feats = feats[:, 1:]
    feats = F.normalize(feats, dim=-1)
    return feats, (height // patch, width // patch)


# ------------------------------------------------------------------------------------------- CLIP
def official_clip_pos(visual: nn.Module, num_tokens: int, height: int, width: int) -> torch.Tensor:
    """CorrCLIP ``interpolate_pos_encoding(x, h, w)`` (called only when the token count differs from the table):
    bicubic with ``scale_factor = ((h//p + 0.1)/sqrt(N), (w//p + 0.1)/sqrt(N))``. Returns [1, 1 + n, D]."""
    pos = visual.positional_embedding  # [1 + N, D]
    patch_h, patch_w = _clip_patch(visual)
    npatch, n = num_tokens - 1, pos.shape[0] - 1
    if npatch == n and height == width:  # never reached from the forward (guarded there)
        return pos
    class_pos = pos[[0]]
    patch_pos = pos[1:]
    dim = pos.shape[-1]
    h0, w0 = height // patch_h + 0.1, width // patch_w + 0.1
    side = int(math.sqrt(n))
    patch_pos = F.interpolate(patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2),
                              scale_factor=(h0 / math.sqrt(n), w0 / math.sqrt(n)), mode="bicubic")
    assert int(h0) == patch_pos.shape[-2] and int(w0) == patch_pos.shape[-1]
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((class_pos.unsqueeze(0), patch_pos), dim=1)


def _clip_patch(visual: nn.Module) -> tuple[int, int]:
    size = visual.patch_size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def masked_block(blk: nn.Module, x: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """One open_clip residual block on one sequence ``x`` [L, D], written out: ``x + attn(ln_1(x))`` then
    ``x + mlp(ln_2(x))`` (layer scales applied), multi-head attention with scores ``q k^T / sqrt(d_head)`` set to
    ``-inf`` where ``allowed`` [L, L] (row = query) is False."""
    attn = blk.attn
    assert isinstance(attn, nn.MultiheadAttention) and attn._qkv_same_embed_dim
    length, width = x.shape
    heads = attn.num_heads
    head_dim = width // heads
    u = blk.ln_1(x)
    qkv = F.linear(u, attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = (part.reshape(length, heads, head_dim).transpose(0, 1) for part in qkv.split(width, dim=-1))
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    out = (scores.softmax(dim=-1) @ v).transpose(0, 1).reshape(length, width)
    x = x + blk.ls_1(attn.out_proj(out))
    x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
    return x


def dbscan_min_samples_1(dist: torch.Tensor, eps: float) -> torch.Tensor:
    """sklearn ``DBSCAN(eps, min_samples=1, metric="precomputed").fit_predict(dist)`` for a square matrix.

    Neighbourhood of i: ``{j : dist[i, j] <= eps}`` (sklearn's radius neighbours, compared in the matrix's
    dtype); core points: at least one neighbour; clusters grown depth-first from the points in index order
    (``dbscan_inner``); label -1 for points that are not core and not reached. Returns int64 [n].
    """
    within = (dist <= eps).cpu().numpy()
    n = within.shape[0]
    neighbourhoods = [np.nonzero(within[i])[0] for i in range(n)]
    is_core = np.array([len(nb) >= 1 for nb in neighbourhoods])
    labels = np.full(n, -1, dtype=np.int64)
    label_num = 0
    for start in range(n):
        if labels[start] != -1 or not is_core[start]:
            continue
        stack = []
        i = start
        while True:
            if labels[i] == -1:
                labels[i] = label_num
                if is_core[i]:
                    for v in neighbourhoods[i]:
                        if labels[v] == -1:
                            stack.append(int(v))
            if not stack:
                break
            i = stack.pop()
        label_num += 1
    return torch.from_numpy(labels)


def official_merge_masks(dino_feats: torch.Tensor, feat_shape: tuple[int, int], masks: torch.Tensor,
                         eps: float = 0.2) -> torch.Tensor:
    """Official mask merging of one window.

    Args:
        dino_feats: [1, N, C] normalised DINO features.
        masks: [1, gh, gw] int label map on the DINO grid.
    Returns:
        [1, gh, gw] int: unchanged when it has <= 2 ids; otherwise every id but the smallest is replaced by
        ``10000 + cluster`` (DBSCAN on ``max(sim) - sim`` of the normalised mean features per region).
    """
    masks = masks.clone()
    feats = dino_feats.reshape(dino_feats.shape[0], *feat_shape, -1)
    for b in range(masks.shape[0]):
        values = torch.unique(masks[b])
        if values.shape[0] > 2:
            region_masks = [value == masks[b] for value in values]
            feat = feats[b]
            inst = torch.stack([feat[m].mean(dim=0) for m in region_masks])
            inst = F.normalize(inst, dim=1)[1:]
            sim = torch.einsum("mc,nc->mn", inst, inst)
            cluster = dbscan_min_samples_1(sim.max() - sim, eps).to(masks.dtype)
            for idx, cluster_v in enumerate(cluster, start=1):
                if cluster_v != -1:
                    masks[b][region_masks[idx]] = cluster_v + PAD_ID
    return masks


def official_scope_attention(dino_feats: torch.Tensor, masks: torch.Tensor, tau: float = 4.0) -> torch.Tensor:
    """Official scope reconstruction: ``S = F F^T``; allowed = same region for every id but the smallest,
    OR (either patch in the smallest-id region AND ``S > mean(S)``); others ``-inf``; ``softmax(tau * S)``.

    Args:
        dino_feats: [B, N, C] normalised; masks: [B, gh, gw] merged ids on the DINO grid.
    Returns:
        [B, N, N].
    """
    similarity = torch.einsum("bmc,bnc->bmn", dino_feats, dino_feats)
    for b in range(masks.shape[0]):
        region_masks = [(value == masks[b]).view(-1) for value in torch.unique(masks[b])]
        equal = torch.zeros_like(similarity[b]).bool()
        for m in region_masks[1:]:
            equal += torch.outer(m, m)
        m = region_masks[0]
        equal += (m.unsqueeze(0) + m.unsqueeze(1)) * (similarity[b] > similarity[b].mean())
        similarity[b][~equal] = float("-inf")
    return (similarity * tau).softmax(dim=-1)


@torch.no_grad()
def official_visual_forward(visual: nn.Module, x: torch.Tensor, dino_feats: torch.Tensor,
                            feat_shape: tuple[int, int], masks: torch.Tensor, *, alpha: float = 1.0,
                            beta: float = 0.5, tau: float = 4.0, num_spatial: int | None = None,
                            dbscan_eps: float = 0.2, trace: dict | None = None) -> torch.Tensor:
    """CorrCLIP ``VisionTransformer.forward(x, dino_feats, feat_shape, masks)`` for one window.

    Args:
        x: [1, 3, h, w] CLIP-normalised padded window; dino_feats: [1, N, C]; masks: [1, 1, h, w] int.
    Returns:
        [1, N, out_dim]: ``(ln_post(main) + alpha * ln_post(spatial) + beta * ln_post(semantic)) @ proj`` on
        the DINO grid.
    """
    assert x.shape[0] == 1, "the official semantic branch supports one window at a time"
    b, _, h, w = x.shape
    patch_h, patch_w = _clip_patch(visual)
    token_size = (h // patch_h, w // patch_w)
    x = x.to(visual.conv1.weight.dtype)

    # stem
    t = visual.conv1(x)
    t = t.reshape(t.shape[0], t.shape[1], -1).permute(0, 2, 1)
    t = torch.cat([visual.class_embedding.view(1, 1, -1).expand(t.shape[0], -1, -1).to(t.dtype), t], dim=1)
    if t.shape[1] != visual.positional_embedding.shape[0]:
        t = t + official_clip_pos(visual, t.shape[1], h, w).to(t.dtype)
    else:
        t = t + visual.positional_embedding.to(t.dtype)
    t = visual.ln_pre(t)  # patch_dropout: identity in eval
    t = t[0]  # [1 + n, D]: one sequence (the official LND with N = 1)

    blocks = visual.transformer.resblocks
    num_layers = len(blocks)
    if num_spatial is None:
        num_spatial = official_num_spatial(num_layers)

    # value reconstruction: DINO cosine similarities; mask merging on the DINO grid
    dmasks = F.interpolate(masks.float(), size=feat_shape, mode="nearest").int().squeeze(1)  # [1, gh, gw]
    if trace is not None:
        trace["dino_masks_before"] = dmasks.clone()
    dmasks = official_merge_masks(dino_feats, feat_shape, dmasks, dbscan_eps)
    attn_weights = official_scope_attention(dino_feats, dmasks, tau)  # [1, N, N]

    # semantic branch: region tokens on the CLIP grid
    cmasks = F.interpolate(dmasks.float().unsqueeze(1), size=token_size, mode="nearest").int().squeeze(1)[0]
    region_masks = torch.stack([value == cmasks for value in torch.unique(cmasks)])  # [K, th, tw]
    num_mct = region_masks.shape[0]
    seq = torch.cat([t[:1].repeat(num_mct, 1), t], dim=0)  # K copies of CLS (after ln_pre), CLS, patches
    length = seq.shape[0]
    # the official bool mask is ``~allowed`` (True = not allowed): CLS/patches see CLS + patches; region token
    # k sees CLS + the patches of region k (not itself, not the other region tokens)
    allowed = torch.zeros(length, length, dtype=torch.bool, device=seq.device)
    allowed[num_mct:, num_mct:] = True
    allowed[:num_mct, num_mct] = True
    allowed[:num_mct, num_mct + 1:] = region_masks.view(num_mct, -1)
    if trace is not None:
        trace.update(dino_masks=dmasks.clone(), clip_masks=cmasks.clone(), allowed=allowed.clone(),
                     attn_weights=attn_weights.clone(), num_spatial=num_spatial)

    feats_spatial = []
    for idx, blk in enumerate(blocks[:-1]):
        seq = masked_block(blk, seq, allowed)
        if num_layers - 2 - num_spatial <= idx <= num_layers - 3:
            feats_spatial.append(seq[num_mct:])

    last = blocks[-1]
    width = last.attn.embed_dim
    # main and spatial branches: v of ln_1, CLS dropped, CLIP grid -> DINO grid, A @ v, out_proj
    branches = torch.stack([seq[num_mct:], torch.stack(feats_spatial).mean(0)])  # [2, 1 + n, D]
    v_weight = last.attn.in_proj_weight.narrow(0, 2 * width, width)
    v_bias = last.attn.in_proj_bias.narrow(0, 2 * width, width)
    v = F.linear(last.ln_1(branches), v_weight, v_bias)  # [2, 1 + n, D]
    v = v.permute(0, 2, 1)[:, :, 1:].unflatten(2, token_size)  # [2, D, th, tw]
    v = F.interpolate(v, size=feat_shape, mode="bilinear", align_corners=False)
    v = v.flatten(2, 3).transpose(1, 2)  # [2, N, D]
    main_spatial = torch.bmm(attn_weights.expand(2, -1, -1).to(v.dtype), v)
    main_spatial = last.attn.out_proj(main_spatial)  # [2, N, D]

    # semantic branch: the full last block on the masked sequence, region tokens' outputs
    mct = masked_block(last, seq, allowed)[:num_mct]  # [K, D]
    expand = F.interpolate(region_masks.unsqueeze(1).to(mct.dtype), size=feat_shape, mode="nearest").flatten(1)
    semantic = expand.T @ mct  # [N, D]

    out = visual.ln_post(torch.cat([main_spatial, semantic[None]], dim=0))  # [3, N, D]
    x_main, x_spatial, x_semantic = out.chunk(3, dim=0)
    out = x_main + x_spatial * alpha + x_semantic * beta
    return out @ visual.proj


# ------------------------------------------------------------------------------------------- segmentor
@torch.no_grad()
def official_forward_feature(clip_model: nn.Module, dino: nn.Module, window: torch.Tensor, mask,
                             text_embeddings: torch.Tensor, *, alpha: float = 1.0, beta: float = 0.5,
                             tau: float = 4.0, num_spatial: int | None = None, dbscan_eps: float = 0.2,
                             dino_window: torch.Tensor | None = None, trace: dict | None = None) -> torch.Tensor:
    """Official ``forward_feature(img, masks)`` of one window.

    Args:
        window: [1, 3, h, w] CLIP-normalised (:func:`clip_normalize`) and already padded (zeros) to the
            multiple of 56, as ``forward_slide`` passes it.
        mask: the window's crop of the (test-size) instance label map, padded with 10000: [h, w], [1, h, w]
            or [1, 1, h, w] integers.
        text_embeddings: [Q, d] (normalised here).
        dino_window: not official: an ImageNet-normalised DINO input [1, 3, h, w] to use instead of the
            official ``Normalize(UnNormalize(window))`` (the variant "DINO input = the [0, 1] window").
        trace: if given, filled with intermediates (merged masks, attention mask, scope attention, ...).
    Returns:
        [1, Q, h, w] raw cosine logits (grid logits upsampled bilinearly, align_corners=False).
    """
    masks = _as_mask4d(mask).to(window.device)
    feats, feat_shape = official_dino_features(dino, dino_input(window) if dino_window is None else dino_window)
    emb = official_visual_forward(clip_model.visual, window, feats, feat_shape, masks, alpha=alpha, beta=beta,
                                  tau=tau, num_spatial=num_spatial, dbscan_eps=dbscan_eps, trace=trace)
    emb = F.normalize(emb, dim=-1)
    text = F.normalize(text_embeddings.to(device=emb.device, dtype=emb.dtype), dim=-1)
    logits = emb @ text.T  # [1, N, Q]
    logits = logits.permute(0, 2, 1).reshape(-1, logits.shape[-1], *feat_shape)
    return F.interpolate(logits, size=window.shape[-2:], mode="bilinear", align_corners=False)


def _prepare_window(window01: torch.Tensor, mask, clip_norm: str, dino_from: str, dino_pad_rgb):
    """Normalise and pad one window as ``forward_slide`` does: image padded with 0 in CLIP space (the mean
    colour), mask padded with 10000, ``compute_padsize(h, w, 56)``. Returns (clip input, DINO input or None,
    padded mask [1, 1, h', w'], pad)."""
    x = clip_normalize(window01, clip_norm)
    masks = _as_mask4d(mask).to(x.device)
    pad = compute_padsize(x.shape[2], x.shape[3], PAD_MULTIPLE)
    dino_window = None
    if dino_from == "rgb":  # not official: DINO input from the [0, 1] window padded with a colour
        if dino_pad_rgb is None:
            dino_pad_rgb = tuple(m / 255.0 for m in MMSEG_MEAN) if clip_norm == "mmseg" else OPENCLIP_MEAN
        fill = _chan(dino_pad_rgb, window01)
        padded = F.pad(window01 - fill, pad) + fill if any(pad) else window01
        dino_window = (padded - _chan(IMAGENET_MEAN, padded)) / _chan(IMAGENET_STD, padded)
    elif dino_from != "clip":
        raise ValueError(f"unknown dino_from {dino_from!r}")
    if any(pad):
        x = F.pad(x, pad)  # zero padding
        masks = F.pad(masks, pad, value=PAD_ID)
    return x, dino_window, masks, pad


@torch.no_grad()
def official_window_logits(clip_model: nn.Module, dino: nn.Module, window01: torch.Tensor, mask,
                           text_embeddings: torch.Tensor, *, clip_norm: str = "mmseg", dino_from: str = "clip",
                           dino_pad_rgb=None, **kwargs) -> torch.Tensor:
    """One unpadded window [1, 3, h, w] (or [3, h, w]) in [0, 1] and its mask crop [h, w] -> [1, Q, h, w]: the
    inner step of the official ``forward_slide`` (normalise, pad image with 0 / mask with 10000 to a multiple
    of 56, ``forward_feature``, crop back).

    ``clip_norm``: "mmseg" (official) or "openclip" (:func:`clip_normalize`). ``dino_from``: "clip" (official:
    un-normalise the padded CLIP input) or "rgb" (not official: ImageNet-normalise the [0, 1] window padded
    with ``dino_pad_rgb``, default the CLIP mean colour of ``clip_norm``).
    """
    if window01.dim() == 3:
        window01 = window01[None]
    height, width = window01.shape[2:]
    x, dino_window, masks, pad = _prepare_window(window01, mask, clip_norm, dino_from, dino_pad_rgb)
    logits = official_forward_feature(clip_model, dino, x, masks, text_embeddings, dino_window=dino_window, **kwargs)
    if any(pad):
        left, top = pad[0], pad[2]
        logits = logits[:, :, top:top + height, left:left + width]
    return logits


def resize_label_map(label_map, size: tuple[int, int]) -> torch.Tensor:
    """Official ``predict``: ``F.interpolate(mask.unsqueeze(1).float(), size, mode="nearest").int()`` ->
    [1, 1, H, W] int32."""
    lm = torch.as_tensor(np.asarray(label_map) if not torch.is_tensor(label_map) else label_map)
    lm = lm.reshape(1, *lm.shape[-2:]).int()
    return F.interpolate(lm.unsqueeze(1).float(), size=tuple(size), mode="nearest").int()


@torch.no_grad()
def official_slide_logits(clip_model: nn.Module, dino: nn.Module, image: torch.Tensor, instance_mask,
                          text_embeddings: torch.Tensor, *, slide_crop: int = 336, slide_stride: int = 112,
                          clip_norm: str = "mmseg", dino_from: str = "clip", dino_pad_rgb=None,
                          **kwargs) -> torch.Tensor:
    """Official ``forward_slide`` on the resized image, before its final resize.

    Args:
        image: [1, 3, H, W] RGB in [0, 1], already resized to the test scale.
        instance_mask: integer label map of any size (the original one), resized to (H, W) as ``predict`` does.
        clip_norm, dino_from, dino_pad_rgb: as :func:`official_window_logits`.
    Returns:
        [1, Q, H, W] logits averaged over the windows (count matrix).
    """
    masks = resize_label_map(instance_mask, image.shape[-2:]).to(image.device)
    h_stride = w_stride = slide_stride
    h_crop = w_crop = slide_crop
    batch, _, h_img, w_img = image.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = count = None
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * h_stride, w_idx * w_stride
            y2, x2 = min(y1 + h_crop, h_img), min(x1 + w_crop, w_img)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            # (normalising the crop = cropping the normalised image: the preprocessor is per pixel)
            crop, dino_window, crop_masks, pad = _prepare_window(image[:, :, y1:y2, x1:x2],
                                                                 masks[:, :, y1:y2, x1:x2], clip_norm,
                                                                 dino_from, dino_pad_rgb)
            logit = official_forward_feature(clip_model, dino, crop, crop_masks, text_embeddings,
                                             dino_window=dino_window, **kwargs)
            if any(pad):
                left, top = pad[0], pad[2]
                logit = logit[:, :, top:top + (y2 - y1), left:left + (x2 - x1)]
            if preds is None:
                preds = logit.new_zeros((batch, logit.shape[1], h_img, w_img))
                count = logit.new_zeros((batch, 1, h_img, w_img))
            preds += F.pad(logit, (x1, w_img - x2, y1, h_img - y2))
            count[:, :, y1:y2, x1:x2] += 1
    assert (count == 0).sum() == 0
    return preds / count


def official_postprocess(seg_logits: torch.Tensor, instance_mask, query_idx: Sequence[int], *,
                         logit_scale: float = 40.0, prob_thd: float = 0.0) -> torch.Tensor:
    """Official ``postprocess_result`` of one image.

    Args:
        seg_logits: [1, Q, H0, W0] at the original size.
        instance_mask: the original-size label map [H0, W0].
        query_idx: class of each query (the official ``get_cls_idx``); only ``max + 1`` and ``len`` are used:
            the first ``Q - C + 1`` queries are treated as class 0's.
    Returns:
        LongTensor [H0, W0].
    """
    seg_logit = seg_logits[0] * logit_scale
    seg_logit = seg_logit.softmax(0)
    num_cls, num_queries = max(query_idx) + 1, len(query_idx)
    if num_cls != num_queries:
        background = seg_logit[:num_queries - num_cls + 1].max(0, keepdim=True)[0]
        seg_logit = torch.cat([background, seg_logit[num_queries - num_cls + 1:]])
    seg_pred = seg_logit.argmax(0, keepdim=True)
    seg_pred[seg_logit.max(0, keepdim=True)[0] < prob_thd] = 0
    # map correction on the original-size label map, every id but the smallest
    inst = torch.as_tensor(np.asarray(instance_mask) if not torch.is_tensor(instance_mask) else instance_mask)
    inst = inst.reshape(inst.shape[-2:]).int().to(seg_pred.device)
    values = torch.unique(inst)[1:]
    region_masks = (values.view(-1, 1, 1) == inst.unsqueeze(0).expand(len(values), -1, -1)).unsqueeze(1)
    for m in region_masks:
        seg_pred[m] = torch.mode(seg_pred[m])[0]
    return seg_pred[0].long()


@torch.no_grad()
def official_predict(clip_model: nn.Module, dino: nn.Module, image: torch.Tensor, instance_mask,
                     text_embeddings: torch.Tensor, query_idx: Sequence[int], *, ori_size=None,
                     logit_scale: float = 40.0, prob_thd: float = 0.0, slide_crop: int = 336,
                     slide_stride: int = 112, clip_norm: str = "mmseg", **kwargs) -> torch.Tensor:
    """Official ``predict`` + ``postprocess_result``.

    Args:
        image: [1, 3, H, W] RGB in [0, 1], already resized by the test pipeline (mmseg ``Resize``).
        instance_mask: the original-size label map [H0, W0] (``generate_mask``).
        ori_size: (H0, W0); defaults to the label map's size (the official ``ori_shape``).
    Returns:
        LongTensor [H0, W0].
    """
    inst = torch.as_tensor(np.asarray(instance_mask) if not torch.is_tensor(instance_mask) else instance_mask)
    if ori_size is None:
        ori_size = tuple(inst.shape[-2:])
    preds = official_slide_logits(clip_model, dino, image, inst, text_embeddings, slide_crop=slide_crop,
                                  slide_stride=slide_stride, clip_norm=clip_norm, **kwargs)
    logits = F.interpolate(preds, size=tuple(ori_size), mode="bilinear", align_corners=False)
    return official_postprocess(logits, inst, query_idx, logit_scale=logit_scale, prob_thd=prob_thd)


def official_sam2_label_map(anns: Sequence[dict], size: tuple[int, int]) -> np.ndarray:
    """Official ``generate_mask`` SAM2 branch: anns sorted by ``"area"`` ascending (stable), painted with ids
    1, 2, ... in that order (later overwrite), unpainted 0; int array [H, W]."""
    label = np.zeros(tuple(size), dtype=int)
    for instance_id, ann in enumerate(sorted(anns, key=lambda a: a["area"]), start=1):
        label[ann["segmentation"]] = instance_id
    return label


#: Input conventions. "official": the literal official code (mmseg x255 constants for CLIP; DINO input =
#: ImageNet-normalise(UnNormalize_openclip(CLIP input)), which is the [0, 1] window only up to ~6e-6 relative, since
#: 122.771/255 != 0.48145466 and 68.501/255 != 0.26862954). "openclip": the official code fed the exact open_clip
#: constants (then the DINO input is the [0, 1] window, padding = the open_clip mean). The contract accepts these two
#: ("closer reference wins": :data:`CONTRACT_VARIANTS`). The "rgb" variants (x255 constants for CLIP but DINO from
#: the [0, 1] window) match neither exactly; they are kept for diagnostics.
INPUT_VARIANTS = {
    "official": {"clip_norm": "mmseg", "dino_from": "clip"},
    "openclip": {"clip_norm": "openclip", "dino_from": "clip"},
    "mmseg+rgb": {"clip_norm": "mmseg", "dino_from": "rgb"},
    "mmseg+rgb/openclip-pad": {"clip_norm": "mmseg", "dino_from": "rgb", "dino_pad_rgb": OPENCLIP_MEAN},
}

#: The variants a port is accepted against.
CONTRACT_VARIANTS = ("official", "openclip")
