"""ProxyCLIP: training-free open-vocabulary segmentation (plain PyTorch, no Trainer needed).

Pipeline for one image (docs/method_notes.md, 'Overview'): short-side resize -> overlapping windows (batched) ->
per window: CLIP values of the last block, resized to the VFM grid, re-aggregated by the proxy
attention from VFM feature similarities -> ``out_proj``/``ln_post``/``proj`` -> cosine logits against
prompt-ensembled text embeddings -> bilinear to the window -> averaged over windows -> bilinear to the
original size -> softmax(x logit_scale), max over synonyms, argmax, threshold.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .clip_encoder import (
    last_block_values,
    maskclip_embeddings,
    project_tokens,
    vanilla_embeddings,
)
from .proxy_attention import proxy_attention
from .registry import MethodSpec
from .segmenter import Segmenter, _require
from .vfm import VFM_KINDS, check_vfm, vfm_features, vfm_raw_attention, vfm_recipe

#: ``proxy``: ProxyCLIP; ``vfm``: the VFM's own last-layer attention in place of the proxy attention;
#: ``maskclip`` / ``clip``: the no-VFM baselines (value path / the unchanged last block, CLIP grid).
ATTENTIONS = ("proxy", "vfm", "maskclip", "clip")


class _ProxyCLIPGeometry(Segmenter):
    """ProxyCLIP's window geometry, shared with its no-VFM baselines: windows padded to a multiple of 56
    in the sliding window, ``window_logits`` unpadded, ProxyCLIP's positional rule, CLIP's mean/std, and the
    default windows 336/112 at short side 336."""

    pad_multiple = 56

    def __init__(self, clip_model: nn.Module, vocabulary: Sequence[Sequence[str]], *, slide_crop: int = 336,
                 slide_stride: int = 112, short_side: int = 336, **kwargs: Any) -> None:
        super().__init__(clip_model, vocabulary, slide_crop=slide_crop, slide_stride=slide_stride,
                         short_side=short_side, **kwargs)

    @torch.no_grad()
    def window_logits(self, windows: torch.Tensor) -> torch.Tensor:
        """Raw cosine logits of a batch of windows.

        Args:
            windows: [B, 3, h, w] RGB in [0, 1] (not normalised).
        Returns:
            [B, Q, h, w] cosine similarities (dtype of the text embeddings, float32 by default), bilinearly
            upsampled from the feature grid (no padding).
        """
        return F.interpolate(self.grid_logits(windows), size=windows.shape[-2:], mode="bilinear", align_corners=False)


class ProxyCLIP(_ProxyCLIPGeometry):
    """ProxyCLIP around an open_clip CLIP and a timm VFM.

    Args:
        clip_model: an ``open_clip.CLIP`` with a ViT vision tower (OpenAI weights need QuickGELU).
        vfm_model: a timm model (ViT for ``dino``/``dinov2``/``mae``, samvit for ``sam``); may be
            ``None`` for the ``maskclip``/``clip`` baselines.
        vocabulary: one entry per class (label order), each a list of synonyms.
        vfm_kind: ``dino`` (also any plain timm ViT), ``dinov2``, ``sam``, ``mae`` or ``sd`` (Stable Diffusion's
            UNet, :mod:`proxyclip_pl.sd_vfm`; not with ``attention="vfm"``).
        beta, gamma: proxy-attention shift and inverse temperature (> 0).
        attention: one of :data:`ATTENTIONS`.
        shift_scale, mask: ablations of the proxy attention (paper Table 4, 'normalisation' and 'mask'):
            without the shift by ``beta`` x the mean similarity and the scaling by ``gamma`` the attention
            logits are the raw cosine similarities; without the mask no key is dropped.
        segmenter_kwargs: the common core's settings (logit scale, ``prob_thd``, windows, test resize,
            ``window_batch_size``, tokenizer / text embeddings, ``area_thd``, ``pamr_steps``), see
            :class:`~proxyclip_pl.segmenter.Segmenter`; defaults: ProxyCLIP's 336/112 windows, short side 336.
    """

    method = "proxyclip"
    encoder_settings = ("vfm_kind", "beta", "gamma", "attention", "shift_scale", "mask")

    def __init__(
        self,
        clip_model: nn.Module,
        vfm_model: nn.Module | None,
        vocabulary: Sequence[Sequence[str]],
        *,
        vfm_kind: str = "dino",
        beta: float = 1.2,
        gamma: float = 3.0,
        attention: str = "proxy",
        shift_scale: bool = True,
        mask: bool = True,
        **segmenter_kwargs: Any,
    ) -> None:
        _require(vfm_kind in VFM_KINDS, f"unknown vfm_kind {vfm_kind!r}; expected one of {', '.join(VFM_KINDS)}")
        _require(attention in ATTENTIONS, f"unknown attention {attention!r}; expected one of {', '.join(ATTENTIONS)}")
        _require(beta > 0, f"beta must be positive, got {beta}")
        _require(gamma > 0, f"gamma must be positive, got {gamma}")
        # The core checks the other settings; it also allows slide_crop = 0 (whole image), ProxyCLIP does not.
        slide_crop = segmenter_kwargs.get("slide_crop", 336)
        _require(slide_crop > 0, f"slide_crop must be positive, got {slide_crop}")
        if attention in ("proxy", "vfm"):
            _require(vfm_model is not None, f"attention={attention!r} needs a vfm_model")
            check_vfm(vfm_model, vfm_kind)
        _require(attention != "vfm" or vfm_recipe(vfm_kind).has_raw_attention,
                 f"attention='vfm' reads the VFM's own last-layer attention, which vfm_kind={vfm_kind!r} does not "
                 "have (a UNet); use attention='proxy'")
        super().__init__(clip_model, vocabulary, **segmenter_kwargs)
        self.vfm = vfm_model.eval().requires_grad_(False) if vfm_model is not None else None
        self.vfm_kind = vfm_kind
        self.beta, self.gamma = float(beta), float(gamma)
        self.attention, self.shift_scale, self.mask = attention, bool(shift_scale), bool(mask)

    # ----------------------------------------------------------------------------------- windows
    def dense_embeddings(self, windows: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Per-token image embeddings of a batch of windows.

        Args:
            windows: [B, 3, h, w] RGB in [0, 1].
        Returns:
            [B, N, d] embeddings (not normalised) and their grid (H, W), N = H*W: the VFM grid for
            ``proxy``/``vfm``, the CLIP grid (h//p, w//p) for the baselines.
        """
        visual = self.clip.visual
        tokens, clip_grid = self.tokens(self.normalize_input(windows))
        if self.attention == "maskclip":
            return maskclip_embeddings(visual, tokens), clip_grid
        if self.attention == "clip":
            return vanilla_embeddings(visual, tokens), clip_grid

        values = last_block_values(visual, tokens)[:, 1:]
        batch, width = values.shape[0], values.shape[-1]
        if self.attention == "proxy":
            features = vfm_features(self.vfm, self.vfm_kind, windows, self.slide_crop)
            grid = tuple(features.shape[-2:])
            attn = proxy_attention(features.flatten(2).transpose(1, 2), self.beta, self.gamma, self.shift_scale, self.mask)
        else:
            attn, grid = vfm_raw_attention(self.vfm, self.vfm_kind, windows, self.slide_crop)
        values = values.transpose(1, 2).reshape(batch, width, *clip_grid)
        values = F.interpolate(values, size=grid, mode="bilinear", align_corners=False)
        values = values.flatten(2).transpose(1, 2)
        mixed = torch.bmm(attn.to(values.dtype), values)
        return project_tokens(visual, mixed), grid


class MaskCLIP(_ProxyCLIPGeometry):
    """MaskCLIP baseline (no VFM): the value path of CLIP's last block on the CLIP grid, with ProxyCLIP's
    window geometry and positional rule. Same results as ``ProxyCLIP(clip, None, vocabulary,
    attention="maskclip", ...)``; keywords as :class:`~proxyclip_pl.segmenter.Segmenter` (defaults: ProxyCLIP's
    336/112 windows, short side 336)."""

    method = "maskclip"

    def dense_embeddings(self, windows: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        tokens, grid = self.tokens(self.normalize_input(windows))
        return maskclip_embeddings(self.clip.visual, tokens), grid


class CLIP(MaskCLIP):
    """Vanilla CLIP baseline (no VFM): the unchanged last block on the CLIP grid, class token dropped.
    Same results as ``ProxyCLIP(clip, None, vocabulary, attention="clip", ...)``."""

    method = "clip"

    def dense_embeddings(self, windows: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        tokens, grid = self.tokens(self.normalize_input(windows))
        return vanilla_embeddings(self.clip.visual, tokens), grid


#: The registry entries of this module's methods (:data:`proxyclip_pl.registry.BUILTIN_METHOD_SPECS`).
PROXYCLIP_SPEC = MethodSpec(
    "proxyclip", ProxyCLIP, towers=("clip", "vfm"),
    published=MappingProxyType({"voc21": 61.3, "context60": 35.3, "coco_object": 37.5, "voc20": 80.3,
                                "context59": 39.1, "coco_stuff": 26.5, "cityscapes": 38.1, "ade20k": 20.2}),
    source="mc-lan/ProxyCLIP@e7b767f; published: paper Table 1 (CLIP ViT-B/16 OpenAI + DINO ViT-B/8)",
    description="CLIP's last-block values re-aggregated by the VFM's proxy attention (ECCV 2024)",
)
MASKCLIP_SPEC = MethodSpec("maskclip", MaskCLIP, source="baseline of the ProxyCLIP paper",
                           description="the value path of CLIP's last block (no VFM)")
CLIP_SPEC = MethodSpec("clip", CLIP, source="baseline of the ProxyCLIP paper",
                       description="CLIP's unchanged last block, class token dropped (no VFM)")
