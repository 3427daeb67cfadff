"""Literal test reference of the OFFICIAL Trident forward (ICCV 2025), independent of ``proxyclip_pl``.

Transcribed (own code, same operations in the same order) from YuHengsss/Trident @
a93b346d1b1dc55bc6f547da5b7d361ad449ae44:

* ``trident.py``                 -- ``Trident.get_trident_seg``, ``get_sam_feat``, ``get_windowed_imgs``,
                                    ``predict`` / ``postprocess_result``;
* ``open_clip/transformer.py``    -- ``VisionTransformer.forward``, ``interpolate_pos_encoding``,
                                    ``custom_attn``, ``guidance_attn``, ``get_sam_sim``;
* ``seg_utils/utils.py``          -- ``preprocess_image``;
* ``segment_anything/predictor.py``, ``utils/transforms.py``, ``modeling/sam.py`` (``preprocess``),
  ``modeling/image_encoder.py``   -- ``SamPredictor.set_image`` and the encoder that keeps ``last_attn``/``last_v``;
* facebookresearch/dino ``vision_transformer.py`` -- ``prepare_tokens``, ``interpolate_pos_encoding``,
  ``Block``/``Attention``, ``get_intermediate_layers``.

Units and inputs (what the official mmseg pipeline hands the model):

* ``image``: float ``[1, 3, H, W]`` RGB in 0..255, *not normalised* -- the test-resized image
  (``Resize(scale=(2048, short), keep_ratio=True)``: mmcv ``imrescale``, cv2 INTER_LINEAR on uint8, see
  :func:`official_test_resize`).  The official ``SegDataPreProcessor`` then converts BGR->RGB and normalises with
  mean/std (122.771, 116.746, 104.094)/(68.501, 66.632, 70.323); this module does that normalisation itself
  (``clip_norm="official"``), or with open_clip's [0, 1] constants (``clip_norm="openclip"``).
* ``original``: uint8 ``H0 x W0 x 3`` RGB at the original size (the official code re-reads the file with
  ``cv2.imread`` + BGR->RGB for SAM).
* Towers: an open_clip (3.x) ``CLIP`` with a ViT image tower, a timm DINO ``VisionTransformer`` and a timm
  ``samvit``; all math runs in the towers' dtype (use float64 towers for tight parity).

Deliberate, documented choices where the official code would not run or is hard-wired:

* windows are never padded (the official pads windows to a multiple of 56, which only happens when
  ``slide_crop % 56 != 0`` and then crashes the splice); non-square windows (a processed side < ``slide_crop``)
  raise ``ValueError`` (the official code swaps height/width there);
* the SAM input size and patch are read from the timm model (``sam.patch_embed.img_size`` / ``patch_size``;
  official: 1024 / 16 hard-wired) and the SAM head count from its last block (official: 12 for vit_b);
* Cityscapes mode raises ``ValueError`` when the two halves give different SAM grids (official: the reshape
  ``(gh, 2 * gw_left)`` fails or scrambles);
* PAMR (official ``pamr_steps``, 0 in every config) and the SAM refinement are not transcribed.
"""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# mmseg SegDataPreProcessor of trident.py (0..255 units)
OFFICIAL_CLIP_MEAN_255 = (122.771, 116.746, 104.094)
OFFICIAL_CLIP_STD_255 = (68.501, 66.632, 70.323)
# UnNormalize of trident.py (= open_clip's constants, [0, 1] units)
OPENCLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENCLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# transforms.Normalize of trident.py (DINO input)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# segment_anything Sam.pixel_mean / pixel_std (0..255 units)
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


def _chan(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


def _ceil_to(value: int, p: int) -> int:
    return value if value % p == 0 else (value // p + 1) * p


def _tower_dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


# --------------------------------------------------------------------------------------------------------------
# Input side: mmseg test resize, data pre-processor, preprocess_image, sliding windows
# --------------------------------------------------------------------------------------------------------------


def official_test_resize(original: np.ndarray, short_side: int, long_side_cap: int = 2048) -> np.ndarray:
    """mmseg ``Resize(scale=(long_side_cap, short_side), keep_ratio=True)`` -> mmcv ``imrescale``: factor
    min(cap / long, short / short_side_of_image), size int(x * f + 0.5), cv2 INTER_LINEAR on the uint8 image."""
    h, w = original.shape[:2]
    factor = min(max(long_side_cap, short_side) / max(h, w), min(long_side_cap, short_side) / min(h, w))
    new_w, new_h = int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)
    return cv2.resize(original, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def clip_normalize(image255: torch.Tensor, clip_norm: str = "official") -> torch.Tensor:
    """The official data pre-processor: (x - 122.771...) / 68.501... on 0..255 RGB (``"official"``), or open_clip's
    (x / 255 - 0.48145466...) / 0.26862954... (``"openclip"``, the contract accepts either)."""
    if clip_norm == "official":
        return (image255 - _chan(OFFICIAL_CLIP_MEAN_255, image255)) / _chan(OFFICIAL_CLIP_STD_255, image255)
    if clip_norm == "openclip":
        return (image255 / 255.0 - _chan(OPENCLIP_MEAN, image255)) / _chan(OPENCLIP_STD, image255)
    raise ValueError(f"clip_norm must be 'official' or 'openclip', got {clip_norm!r}")


def dino_input(clip_normalized: torch.Tensor | None, image255: torch.Tensor | None = None,
               mode: str = "official") -> torch.Tensor:
    """``self.norm(self.unnorm(img))`` of trident.py: undo CLIP normalisation with open_clip's constants, then
    ImageNet-normalise (``"official"``); ``"direct"``: ImageNet-normalise image255 / 255 (needs ``image255``)."""
    if mode == "official":
        x = clip_normalized * _chan(OPENCLIP_STD, clip_normalized) + _chan(OPENCLIP_MEAN, clip_normalized)
    elif mode == "direct":
        x = image255 / 255.0
    else:
        raise ValueError(f"dino mode must be 'official' or 'direct', got {mode!r}")
    return (x - _chan(IMAGENET_MEAN, x)) / _chan(IMAGENET_STD, x)


def official_preprocess_image(image: torch.Tensor, stride: int, slide_crop: int) -> torch.Tensor:
    """``seg_utils.utils.preprocess_image``."""
    h, w = image.shape[2:]
    longer = max(h, w)
    if h % stride == 0 and w % stride == 0:
        return image
    dst_longer = _ceil_to(longer, stride)
    new_h = int(h * dst_longer / longer)
    new_w = int(w * dst_longer / longer)
    new_h, new_w = _ceil_to(new_h, stride), _ceil_to(new_w, stride)
    new_h, new_w = max(new_h, slide_crop), max(new_w, slide_crop)
    return F.interpolate(image, (new_h, new_w), mode="bilinear", align_corners=False)


def official_windows(img: torch.Tensor, patch: int, slide_crop: int, slide_stride: int):
    """``Trident.get_windowed_imgs`` without the (never-firing for valid inputs) padding to 56.

    Returns (batch [B, 3, c, c], patch boxes [(y1, x1, y2, x2) in CLIP patches], (h_grids, w_grids))."""
    _, _, h_img, w_img = img.shape
    h_grids = max(h_img - slide_crop + slide_stride - 1, 0) // slide_stride + 1
    w_grids = max(w_img - slide_crop + slide_stride - 1, 0) // slide_stride + 1
    crops, boxes = [], []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * slide_stride, w_idx * slide_stride
            y2, x2 = min(y1 + slide_crop, h_img), min(x1 + slide_crop, w_img)
            y1, x1 = max(y2 - slide_crop, 0), max(x2 - slide_crop, 0)
            if any(v % patch for v in (y1, x1, y2, x2)):
                raise ValueError(f"window ({y1}, {x1}, {y2}, {x2}) is not on the {patch}-pixel patch grid")
            if (y2 - y1) != (x2 - x1):
                raise ValueError(f"non-square window {y2 - y1}x{x2 - x1}: the official code only handles square "
                                 f"windows (processed sides must be >= slide_crop)")
            crops.append(img[:, :, y1:y2, x1:x2])
            boxes.append((y1 // patch, x1 // patch, y2 // patch, x2 // patch))
    return torch.cat(crops, dim=0), boxes, (h_grids, w_grids)


# --------------------------------------------------------------------------------------------------------------
# CLIP tower (official VisionTransformer.forward up to the last block)
# --------------------------------------------------------------------------------------------------------------


def _official_clip_pos_embed(visual, x: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """``VisionTransformer.interpolate_pos_encoding(x, w, h)`` (w = input height, h = input width, as called)."""
    pos = visual.positional_embedding
    npatch = x.shape[1] - 1
    n = pos.shape[0] - 1
    if npatch == n and w == h:
        return pos
    class_pos = pos[[0]]
    patch_pos = pos[1:]
    dim = x.shape[-1]
    p_h, p_w = visual.patch_size if isinstance(visual.patch_size, tuple) else (visual.patch_size,) * 2
    w0 = w // p_h + 0.1
    h0 = h // p_w + 0.1
    side = int(math.sqrt(n))
    patch_pos = F.interpolate(
        patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)),
        mode="bicubic",
    )
    assert int(w0) == patch_pos.shape[-2] and int(h0) == patch_pos.shape[-1]
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((class_pos.unsqueeze(0), patch_pos), dim=1)


def _clip_values(visual, x: torch.Tensor):
    """Official ``VisionTransformer.forward`` until ``custom_attn`` computes v: returns v [B, D, th, tw] (value
    projection of ln_1 of the last block's input, class token dropped) and the CLIP grid (th, tw)."""
    _, _, w, h = x.shape  # sic: official naming (w = height, h = width)
    x = visual.conv1(x)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
    x = torch.cat([cls, x], dim=1)
    if x.shape[1] != visual.positional_embedding.shape[0]:
        x = x + _official_clip_pos_embed(visual, x, w, h).to(x.dtype)
    else:
        x = x + visual.positional_embedding.to(x.dtype)
    x = visual.ln_pre(x)  # patch dropout: identity at eval
    p_h, p_w = visual.patch_size if isinstance(visual.patch_size, tuple) else (visual.patch_size,) * 2
    token_size = (h // p_h, w // p_w)  # sic (square windows only, see official_windows)
    batch_first = getattr(visual.transformer, "batch_first", False)
    x = x if batch_first else x.permute(1, 0, 2)
    for blk in visual.transformer.resblocks[:-1]:
        x = blk(x)
    x = x if batch_first else x.permute(1, 0, 2)  # NLD
    x = x[:, 1:]  # class token removed
    last = visual.transformer.resblocks[-1]
    y = last.ln_1(x)
    _, _, v = F.linear(y, last.attn.in_proj_weight, last.attn.in_proj_bias).chunk(3, dim=-1)
    bsz, n, dim = v.shape
    v = v.permute(0, 2, 1).reshape(bsz, dim, token_size[0], token_size[1])
    return v, token_size


# --------------------------------------------------------------------------------------------------------------
# DINO tower (facebookresearch/dino get_intermediate_layers(x)[0], timm weights)
# --------------------------------------------------------------------------------------------------------------


def _dino_pos_embed(dino, x: torch.Tensor, w: int, h: int) -> torch.Tensor:
    pos = dino.pos_embed
    npatch = x.shape[1] - 1
    n = pos.shape[1] - 1
    if npatch == n and w == h:
        return pos
    class_pos = pos[:, 0]
    patch_pos = pos[:, 1:]
    dim = x.shape[-1]
    p = dino.patch_embed.patch_size
    p = p[0] if isinstance(p, tuple) else p
    w0 = w // p + 0.1
    h0 = h // p + 0.1
    side = int(math.sqrt(n))
    patch_pos = F.interpolate(
        patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)),
        mode="bicubic",
    )
    assert int(w0) == patch_pos.shape[-2] and int(h0) == patch_pos.shape[-1]
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((class_pos.unsqueeze(0), patch_pos), dim=1)


def _dino_block(blk, x: torch.Tensor) -> torch.Tensor:
    attn = blk.attn
    y = blk.norm1(x)
    b, n, c = y.shape
    heads = attn.num_heads
    qkv = attn.qkv(y).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    a = (q @ k.transpose(-2, -1)) * ((c // heads) ** -0.5)
    a = a.softmax(dim=-1)
    y = (a @ v).transpose(1, 2).reshape(b, n, c)
    y = attn.proj(y)
    x = x + y
    x = x + blk.mlp(blk.norm2(x))
    return x


def official_dino_features(dino, x: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised windows [B, 3, h, w] -> final-norm patch tokens [B, C, h/p, w/p]."""
    for blk in dino.blocks:  # the transcription assumes DINO's plain block
        for name in ("ls1", "ls2"):
            assert isinstance(getattr(blk, name, torch.nn.Identity()), torch.nn.Identity)
    assert getattr(dino, "num_prefix_tokens", 1) == 1
    _, _, w, h = x.shape
    p = dino.patch_embed.patch_size
    p = p[0] if isinstance(p, tuple) else p
    t = dino.patch_embed.proj(x).flatten(2).transpose(1, 2)
    cls = dino.cls_token.expand(t.shape[0], -1, -1)
    t = torch.cat((cls, t), dim=1)
    t = t + _dino_pos_embed(dino, t, w, h)
    for blk in dino.blocks:
        t = _dino_block(blk, t)
    t = dino.norm(t)
    nb = t.shape[0]
    return t[:, 1:, :].reshape(nb, w // p, h // p, -1).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------------------------------------------
# custom_attn: proxy attention of the window batch
# --------------------------------------------------------------------------------------------------------------


def _window_features_normalized(clip_model, dino, clip_batch, dino_batch, beta, gamma):
    """``custom_attn`` on the whole window batch -> [B, D, gh_dino, gw_dino] (out_proj(A v))."""
    visual = clip_model.visual
    v, token_size = _clip_values(visual, clip_batch)
    ex_feats = official_dino_features(dino, dino_batch)
    last = visual.transformer.resblocks[-1]
    num_heads = last.attn.num_heads
    bsz, embed_dim = v.shape[:2]
    head_dim = embed_dim // num_heads

    _, _, gh, gw = ex_feats.shape
    q_k = F.normalize(ex_feats.flatten(2, 3), dim=1)
    similarity = torch.einsum("bcm,bcn->bmn", q_k, q_k)
    similarity = (similarity - torch.mean(similarity) * beta) * gamma
    similarity[similarity < 0.0] = float("-inf")
    mask = similarity.to(v.dtype).unsqueeze(1).repeat(1, num_heads, 1, 1)
    mask = mask.reshape(bsz * num_heads, mask.shape[2], mask.shape[3])
    attn_weights = F.softmax(mask, dim=-1)

    v = v.reshape(bsz * num_heads, head_dim, token_size[0], token_size[1])
    v = F.interpolate(v, size=(gh, gw), mode="bilinear", align_corners=False)
    v = v.permute(0, 2, 3, 1).reshape(bsz * num_heads, gh * gw, head_dim)
    out = torch.bmm(attn_weights, v)  # [B*heads, N, hd]
    out = out.reshape(bsz, num_heads, gh * gw, head_dim).permute(0, 2, 1, 3).reshape(bsz, gh * gw, embed_dim)
    out = last.attn.out_proj(out)
    return out.permute(0, 2, 1).reshape(bsz, embed_dim, gh, gw), token_size


def official_window_features(clip_model, dino, windows255: torch.Tensor, *, beta: float = 1.2, gamma: float = 3.0,
                             clip_norm: str = "official", dino_mode: str = "official") -> torch.Tensor:
    """Windows [B, 3, h, w] RGB in 0..255 (one image's windows, ONE batch: mu is their joint mean) ->
    [B, D, gh_dino, gw_dino]."""
    clip_batch = clip_normalize(windows255, clip_norm)
    dino_batch = dino_input(clip_batch, windows255, dino_mode)
    return _window_features_normalized(clip_model, dino, clip_batch, dino_batch, beta, gamma)[0]


# --------------------------------------------------------------------------------------------------------------
# SAM: SamPredictor.set_image + ImageEncoderViT (last_attn, last_v) + get_sam_sim
# --------------------------------------------------------------------------------------------------------------


def _get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_rel_dist,
                                mode="linear")
        resized = resized.reshape(-1, max_rel_dist).permute(1, 0)
    else:
        resized = rel_pos
    q_coords = torch.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    rel = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return resized[rel.long()]


def _add_decomposed_rel_pos(attn, q, rel_pos_h, rel_pos_w, q_size, k_size):
    q_h, q_w = q_size
    k_h, k_w = k_size
    rh = _get_rel_pos(q_h, k_h, rel_pos_h)
    rw = _get_rel_pos(q_w, k_w, rel_pos_w)
    b, _, dim = q.shape
    r_q = q.reshape(b, q_h, q_w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
    return (attn.view(b, q_h, q_w, k_h, k_w) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).view(
        b, q_h * q_w, k_h * k_w)


def _sam_attention(attn_mod, x):
    b, h, w, _ = x.shape
    heads = attn_mod.num_heads
    qkv = attn_mod.qkv(x).reshape(b, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, b * heads, h * w, -1).unbind(0)
    scale = q.shape[-1] ** -0.5
    attn = (q * scale) @ k.transpose(-2, -1)
    if getattr(attn_mod, "use_rel_pos", False):
        attn = _add_decomposed_rel_pos(attn, q, attn_mod.rel_pos_h, attn_mod.rel_pos_w, (h, w), (h, w))
    attn = attn.softmax(dim=-1)
    out = (attn @ v).view(b, heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    out = attn_mod.proj(out)
    return out, attn, v.view(b, heads, h, w, -1)


def _window_partition(x, ws):
    b, h, w, c = x.shape
    pad_h, pad_w = (ws - h % ws) % ws, (ws - w % ws) % ws
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // ws, ws, wp // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, c), (hp, wp)


def _window_unpartition(windows, ws, pad_hw, hw):
    hp, wp = pad_hw
    h, w = hw
    b = windows.shape[0] // (hp * wp // ws // ws)
    x = windows.view(b, hp // ws, wp // ws, ws, ws, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, hp, wp, -1)
    return x[:, :h, :w, :].contiguous() if (hp > h or wp > w) else x


def _sam_block(blk, x):
    for name in ("ls1", "ls2"):
        assert isinstance(getattr(blk, name, torch.nn.Identity()), torch.nn.Identity)
    shortcut = x
    x = blk.norm1(x)
    ws = blk.window_size
    if ws > 0:
        h, w = x.shape[1], x.shape[2]
        x, pad_hw = _window_partition(x, ws)
    x, attn, v = _sam_attention(blk.attn, x)
    if ws > 0:
        x = _window_unpartition(x, ws, pad_hw, (h, w))
    x = shortcut + x
    x = x + blk.mlp(blk.norm2(x))
    return x, attn, v


def sam_geometry(sam) -> tuple[int, int]:
    """(input side, patch) of a timm samvit (official: 1024, 16)."""
    size = sam.patch_embed.img_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    patch = sam.patch_embed.patch_size
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    return int(size), int(patch)


def official_sam_features(sam, part: np.ndarray):
    """``get_sam_feat(part, 16)``: ``SamPredictor.set_image`` (PIL bilinear resize of the uint8 image to the long
    side, SAM mean/std, zero pad right/bottom) -> encoder -> last block's attention [heads, N, N] and values
    [heads, gh, gw, hd] cropped to the valid (gh, gw) grid."""
    img_size, p = sam_geometry(sam)
    dtype = _tower_dtype(sam)
    device = next(sam.parameters()).device
    oldh, oldw = part.shape[:2]
    scale = img_size * 1.0 / max(oldh, oldw)
    newh, neww = int(oldh * scale + 0.5), int(oldw * scale + 0.5)
    resized = np.array(Image.fromarray(np.ascontiguousarray(part)).resize((neww, newh), Image.BILINEAR))
    x = torch.as_tensor(resized, device=device).permute(2, 0, 1).contiguous()[None]
    mean = torch.tensor(SAM_PIXEL_MEAN, dtype=dtype, device=device).view(-1, 1, 1)
    std = torch.tensor(SAM_PIXEL_STD, dtype=dtype, device=device).view(-1, 1, 1)
    x = (x.to(dtype) - mean) / std
    x = F.pad(x, (0, img_size - x.shape[-1], 0, img_size - x.shape[-2]))
    # ImageEncoderViT.forward
    t = sam.patch_embed.proj(x).permute(0, 2, 3, 1)
    if sam.pos_embed is not None:
        assert tuple(sam.pos_embed.shape[1:3]) == tuple(t.shape[1:3])
        t = t + sam.pos_embed
    assert isinstance(getattr(sam, "norm_pre", torch.nn.Identity()), torch.nn.Identity)
    for blk in sam.blocks:
        t, attn, v = _sam_block(blk, t)
    assert sam.blocks[-1].window_size == 0, "the last SAM block must use global attention"
    heads = sam.blocks[-1].attn.num_heads
    gh, gw = int(newh // p), int(neww // p)
    hw = img_size // p
    attn = attn.view(1, heads, hw, hw, hw, hw)[:, :, :gh, :gw, :gh, :gw]
    attn = attn.flatten(2, 3).flatten(3, 4)[0]  # [heads, N, N]
    v = v[:, :, :gh, :gw, :][0]  # [heads, gh, gw, hd]
    return attn, v, (gh, gw)


def official_get_sam_sim(sam_v: torch.Tensor, sam_attn: torch.Tensor, cos_fac: float, refine_neg_cos: bool = True):
    """``VisionTransformer.get_sam_sim`` without the final repeat over CLIP heads: [N, N]."""
    sam_v = F.normalize(sam_v.flatten(1, 2), dim=-1)[None]  # 1, heads, N, hd
    sam_attn = sam_attn[None]
    sam_sim = torch.einsum("bhmc,bhnc->bhmn", sam_v, sam_v)
    sim_thresh = cos_fac * sam_sim.mean(dim=1, keepdim=True).mean(dim=-1, keepdim=True)
    if not refine_neg_cos:
        sim_thresh = torch.where(sim_thresh < 0.0, 0.6, sim_thresh)
    sim_thresh = torch.where(sim_thresh > 0.9, 0.9, sim_thresh)
    refined = torch.where(sam_sim > sim_thresh, sam_attn, torch.zeros_like(sam_attn))
    refined = refined.mean(dim=1)
    return (refined / refined.sum(dim=-1, keepdim=True))[0]


def official_sam_parts(original: np.ndarray, patch: int, dataset_type: str = "PascalVOCDataset") -> list[np.ndarray]:
    """cv2 resize (INTER_LINEAR) of the original to multiples of the CLIP patch; Cityscapes: left/right halves."""
    h, w = original.shape[:2]
    th, tw = _ceil_to(h, patch), _ceil_to(w, patch)
    tmp = cv2.resize(original, (tw, th))
    if dataset_type == "CityscapesDataset":
        return [tmp[:, :tw // 2, :], tmp[:, tw // 2:, :]]
    return [tmp]


def official_sam_affinity(sam, original: np.ndarray, *, patch_size: int, cos_fac: float = 1.2,
                          refine_neg_cos: bool = True, dataset_type: str = "PascalVOCDataset"):
    """List of (A [N, N], (gh, gw)), one per SAM part."""
    out = []
    for part in official_sam_parts(original, patch_size, dataset_type):
        attn, v, grid = official_sam_features(sam, part)
        out.append((official_get_sam_sim(v, attn, cos_fac, refine_neg_cos), grid))
    return out


# --------------------------------------------------------------------------------------------------------------
# The whole forward
# --------------------------------------------------------------------------------------------------------------


def _clip_patch(clip_model, patch_size):
    if patch_size is not None:
        return int(patch_size)
    p = clip_model.visual.patch_size
    return int(p[0] if isinstance(p, (tuple, list)) else p)


@torch.no_grad()
def official_trident_embeddings(clip_model, dino, sam, image: torch.Tensor, original: np.ndarray, *,
                                slide_crop: int = 336, slide_stride: int = 112, beta: float = 1.2,
                                gamma: float = 3.0, cos_fac: float = 1.2, refine_neg_cos: bool = True,
                                dataset_type: str = "PascalVOCDataset", patch_size: int | None = None,
                                clip_norm: str = "official", dino_mode: str = "official"):
    """``get_trident_seg`` up to ``clip_features /= clip_features.norm(...)``: unit image embeddings [N, d] in
    row-major order of SAM's valid grid (gh, gw) (Cityscapes: the halves' grids side by side), and (gh, gw).

    Args:
        image: [1, 3, H, W] RGB 0..255 (the test-resized image, not normalised).
        original: uint8 H0 x W0 x 3 RGB at the original size.
        clip_norm: ``"official"`` (mmseg 0..255 constants) or ``"openclip"``.
        dino_mode: ``"official"`` (ImageNet normalisation of the CLIP-un-normalised window) or ``"direct"``
            (ImageNet normalisation of the window / 255).
    """
    visual = clip_model.visual
    dtype = _tower_dtype(visual)
    stride = _clip_patch(clip_model, patch_size)

    # SAM
    parts = official_sam_parts(original, stride, dataset_type)
    sams = [official_sam_features(sam, part) for part in parts]
    if len(sams) == 2 and sams[0][2] != sams[1][2]:
        raise ValueError(f"Cityscapes halves give different SAM grids {sams[0][2]} / {sams[1][2]}: the official "
                         f"reshape (gh, 2 * gw_left) does not hold")
    sam_valid_h = sams[0][2][0]
    sam_valid_w = sum(s[2][1] for s in sams)

    # CLIP windows (normalise, then preprocess_image, then the slide grid)
    image = image.to(dtype)
    normalized = clip_normalize(image, clip_norm)
    processed = official_preprocess_image(normalized, stride, slide_crop)
    clip_whole_h, clip_whole_w = processed.shape[-2:]
    clip_feat_h, clip_feat_w = clip_whole_h // stride, clip_whole_w // stride
    img_batch, boxes, (win_h, win_w) = official_windows(processed, stride, slide_crop, slide_stride)
    if dino_mode == "direct":
        raw = official_windows(official_preprocess_image(image, stride, slide_crop), stride, slide_crop,
                               slide_stride)[0]
        dino_batch = dino_input(None, raw, "direct")
    else:
        dino_batch = dino_input(img_batch, None, "official")
    dino_batch = dino_batch.to(_tower_dtype(dino))

    feats, token_size = _window_features_normalized(clip_model, dino, img_batch, dino_batch, beta, gamma)
    bsz, embed_dim, vh, vw = feats.shape
    last = visual.transformer.resblocks[-1]
    num_heads = last.attn.num_heads
    head_dim = embed_dim // num_heads

    # guidance_attn: splice
    v_img = feats
    if v_img.shape[-1] % token_size[1] != 0:
        ratio = int(round(vh / token_size[0]))
        v_img = F.interpolate(v_img, size=(token_size[0] * ratio, token_size[1] * ratio), mode="bilinear",
                              align_corners=False)
    else:
        ratio = v_img.shape[-1] // token_size[1]
    dst_v = v_img.new_zeros(1, embed_dim, clip_feat_h * ratio, clip_feat_w * ratio)
    count = v_img.new_zeros(1, 1, clip_feat_h * ratio, clip_feat_w * ratio)
    for h_idx in range(win_h):
        for w_idx in range(win_w):
            y1, x1, y2, x2 = boxes[h_idx * win_w + w_idx]
            dst_v[0, :, y1 * ratio:y2 * ratio, x1 * ratio:x2 * ratio] += v_img[h_idx * win_w + w_idx]
            count[:, :, y1 * ratio:y2 * ratio, x1 * ratio:x2 * ratio] += 1
    dst_v = dst_v / count

    # guidance_attn: SAM aggregation
    if len(sams) == 2:
        halves = [dst_v[:, :, :, :dst_v.shape[3] // 2], dst_v[:, :, :, dst_v.shape[3] // 2:]]
    else:
        halves = [dst_v]
    outs = []
    for (attn, v, (gh, gw)), half in zip(sams, halves):
        weights = official_get_sam_sim(v, attn, cos_fac, refine_neg_cos).type_as(dst_v)  # [N, N]
        half = F.interpolate(half, size=(gh, gw), mode="bilinear", align_corners=False)
        half = half.reshape(1, num_heads, head_dim, -1).permute(0, 1, 3, 2)  # 1, heads, N, hd
        out = torch.matmul(weights[None, None], half).view(1, num_heads, gh, gw, head_dim)
        outs.append(out)
    out = torch.cat(outs, dim=-2).flatten(2, 3)  # 1, heads, N, hd
    out = out.permute(2, 0, 1, 3).flatten(2)  # N, 1, D
    x = out.permute(1, 0, 2)  # 1, N, D
    x = visual.ln_post(x)
    x = x @ visual.proj
    x = x / x.norm(dim=-1, keepdim=True)
    return x[0], (sam_valid_h, sam_valid_w)


@torch.no_grad()
def official_trident_logits(clip_model, dino, sam, image: torch.Tensor, original: np.ndarray,
                            text_embeddings: torch.Tensor, *, slide_crop: int = 336, slide_stride: int = 112,
                            beta: float = 1.2, gamma: float = 3.0, cos_fac: float = 1.2, refine_neg_cos: bool = True,
                            dataset_type: str = "PascalVOCDataset", patch_size: int | None = None,
                            clip_norm: str = "official", dino_mode: str = "official") -> torch.Tensor:
    """``get_trident_seg`` before its final upsampling: [Q, gh, gw] cosine logits on SAM's valid grid
    (Cityscapes: the halves' grids concatenated along the width). ``text_embeddings`` [Q, d] are normalised here
    in float64, then cast to the towers' dtype (the official query features are unit rows). Other arguments: see
    :func:`official_trident_embeddings`."""
    x, (gh, gw) = official_trident_embeddings(
        clip_model, dino, sam, image, original, slide_crop=slide_crop, slide_stride=slide_stride, beta=beta,
        gamma=gamma, cos_fac=cos_fac, refine_neg_cos=refine_neg_cos, dataset_type=dataset_type,
        patch_size=patch_size, clip_norm=clip_norm, dino_mode=dino_mode)
    text = F.normalize(text_embeddings.detach().double(), dim=-1).to(dtype=x.dtype, device=x.device)
    logits = x[None] @ text.T  # 1, N, Q
    logits = logits.permute(0, 2, 1).reshape(-1, logits.shape[-1], gh, gw)
    return logits[0]


def official_postprocess(logits: torch.Tensor, size: tuple[int, int], num_classes: int, logit_scale: float = 40.0,
                         prob_thd: float = 0.0) -> torch.Tensor:
    """``F.interpolate(logits, ori_shape, 'bilinear')`` of get_trident_seg + ``postprocess_result``: [Q, h, w]
    -> LongTensor [H0, W0]. Class 0 = max over the first Q - C + 1 queries (the official assumption that only
    class 0 has several names)."""
    seg = F.interpolate(logits[None], size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)[0]
    seg = (seg * logit_scale).softmax(0)
    num_queries = seg.shape[0]
    if num_classes != num_queries:
        seg_fg = seg[-num_classes + 1:]
        seg_bg = seg[:-num_classes + 1].max(0)[0]
        seg = torch.cat([seg_bg.unsqueeze(0), seg_fg], dim=0)
    pred = seg.argmax(0, keepdim=True)
    pred[seg.max(0, keepdim=True)[0] < prob_thd] = 0
    return pred[0].long()


@torch.no_grad()
def official_trident_predict(clip_model, dino, sam, image: torch.Tensor, original: np.ndarray,
                             text_embeddings: torch.Tensor, *, num_classes: int, logit_scale: float = 40.0,
                             prob_thd: float = 0.0, **kwargs) -> torch.Tensor:
    """Label map [H0, W0] of ``original`` (``image``: its test-resized version, 0..255, see the module doc;
    :func:`official_test_resize` gives it). ``kwargs``: those of :func:`official_trident_logits`."""
    logits = official_trident_logits(clip_model, dino, sam, image, original, text_embeddings, **kwargs)
    return official_postprocess(logits, original.shape[:2], num_classes, logit_scale, prob_thd)


def image_tensor(rgb_uint8: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    """uint8 H x W x 3 -> [1, 3, H, W] float in 0..255."""
    return torch.from_numpy(np.ascontiguousarray(rgb_uint8)).permute(2, 0, 1)[None].to(dtype)
