"""ProxyCLIP: training-free open-vocabulary segmentation (plain PyTorch, no Trainer needed).

Pipeline for one image (method.md): short-side resize -> overlapping windows (batched) ->
per window: CLIP values of the last block, resized to the VFM grid, re-aggregated by the proxy
attention from VFM feature similarities -> ``out_proj``/``ln_post``/``proj`` -> cosine logits against
prompt-ensembled text embeddings -> bilinear to the window -> averaged over windows -> bilinear to the
original size -> softmax(x logit_scale), max over synonyms, argmax, threshold.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datamodules.io import array_to_rgb_uint8 as to_rgb_uint8  # noqa: F401  (gray/RGBA/16-bit inputs)

from .clip_encoder import (
    CLIP_MEAN,
    CLIP_STD,
    check_clip_visual,
    last_block_values,
    maskclip_embeddings,
    project_tokens,
    tokens_before_last_block,
    vanilla_embeddings,
)
from .postprocess import logits_to_labels
from .precision import autocast_off
from .proxy_attention import proxy_attention
from .sliding_window import sliding_window_logits
from .vfm import VFM_KINDS, check_vfm, normalize, vfm_features, vfm_raw_attention
from .vocabulary import encode_text_embeddings, flatten_vocabulary

#: ``proxy``: ProxyCLIP; ``vfm``: the VFM's own last-layer attention in place of the proxy attention;
#: ``maskclip`` / ``clip``: the no-VFM baselines (value path / the unchanged last block, CLIP grid).
ATTENTIONS = ("proxy", "vfm", "maskclip", "clip")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


class ProxyCLIP(nn.Module):
    """ProxyCLIP around an open_clip CLIP and a timm VFM.

    Args:
        clip_model: an ``open_clip.CLIP`` with a ViT vision tower (OpenAI weights need QuickGELU).
        vfm_model: a timm model (ViT for ``dino``/``dinov2``/``mae``, samvit for ``sam``); may be
            ``None`` for the ``maskclip``/``clip`` baselines.
        vocabulary: one entry per class (label order), each a list of synonyms.
        vfm_kind: ``dino`` (also any plain timm ViT), ``dinov2``, ``sam`` or ``mae``.
        beta, gamma: proxy-attention shift and inverse temperature (> 0).
        logit_scale: multiplies the cosine logits before the softmax.
        prob_thd: pixels whose best class probability is below it become class 0.
        slide_crop, slide_stride: sliding-window size and step (0 < stride <= crop).
        short_side: test-time resize of ``predict``: short side to this, long side capped at 2048.
        window_batch_size: windows per encoder call (memory bound; results do not depend on it). Default:
            8 on a GPU, where batching fills the device; 1 on CPU, where a single window already saturates
            the cores and larger batches only raise the peak memory (resolved at run time, after any ``.to()``).
        attention: one of :data:`ATTENTIONS`.
        normalize, mask: ablations of the proxy attention (paper Table 4): without normalisation the
            logits are the raw cosine similarities (no shift, gamma = 1); without mask no key is dropped.
        tokenizer: open_clip tokenizer; defaults to open_clip's BPE tokenizer with the model's context.
        text_embeddings: precomputed [Q, d] embeddings (e.g. from a cache) instead of encoding prompts.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        vfm_model: nn.Module | None,
        vocabulary: Sequence[Sequence[str]],
        vfm_kind: str = "dino",
        beta: float = 1.2,
        gamma: float = 3.0,
        logit_scale: float = 40.0,
        prob_thd: float = 0.0,
        slide_crop: int = 336,
        slide_stride: int = 112,
        short_side: int = 336,
        *,
        window_batch_size: int | None = None,
        attention: str = "proxy",
        normalize: bool = True,
        mask: bool = True,
        long_side_cap: int = 2048,
        tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
        text_embeddings: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        _require(vfm_kind in VFM_KINDS, f"unknown vfm_kind {vfm_kind!r}; expected one of {', '.join(VFM_KINDS)}")
        _require(attention in ATTENTIONS, f"unknown attention {attention!r}; expected one of {', '.join(ATTENTIONS)}")
        _require(beta > 0, f"beta must be positive, got {beta}")
        _require(gamma > 0, f"gamma must be positive, got {gamma}")
        _require(logit_scale > 0, f"logit_scale must be positive, got {logit_scale}")
        _require(0.0 <= prob_thd <= 1.0, f"prob_thd must lie in [0, 1], got {prob_thd}")
        _require(slide_crop > 0, f"slide_crop must be positive, got {slide_crop}")
        _require(slide_stride > 0, f"slide_stride must be positive, got {slide_stride}")
        _require(slide_stride <= slide_crop, f"slide_stride ({slide_stride}) must not exceed slide_crop ({slide_crop})")
        _require(short_side > 0, f"short_side must be positive, got {short_side}")
        _require(long_side_cap > 0, f"long_side_cap must be positive, got {long_side_cap}")
        _require(window_batch_size is None or window_batch_size >= 1, f"window_batch_size must be >= 1, got {window_batch_size}")
        visual = getattr(clip_model, "visual", None)
        _require(visual is not None, "clip_model must be an open_clip CLIP model with a .visual tower")
        check_clip_visual(visual)
        if attention in ("proxy", "vfm"):
            _require(vfm_model is not None, f"attention={attention!r} needs a vfm_model")
            check_vfm(vfm_model, vfm_kind)
        queries, query_to_class = flatten_vocabulary(vocabulary)

        self.clip = clip_model.eval().requires_grad_(False)
        self.vfm = vfm_model.eval().requires_grad_(False) if vfm_model is not None else None
        self.vocabulary = [list(names) for names in vocabulary]
        self.queries = queries
        self.vfm_kind = vfm_kind
        self.beta, self.gamma = float(beta), float(gamma)
        self.logit_scale, self.prob_thd = float(logit_scale), float(prob_thd)
        self.slide_crop, self.slide_stride, self.short_side = int(slide_crop), int(slide_stride), int(short_side)
        self.long_side_cap = int(long_side_cap)
        self.window_batch_size = None if window_batch_size is None else int(window_batch_size)
        self.attention, self.normalize, self.mask = attention, bool(normalize), bool(mask)
        # Buffers start on the parameters' device (a model may be built from towers already on a GPU);
        # afterwards they move with every ``.to()``.
        device = next(self.clip.parameters()).device
        self.register_buffer("query_to_class", query_to_class.to(device), persistent=False)

        if text_embeddings is None:
            if tokenizer is None:
                import open_clip

                tokenizer = open_clip.SimpleTokenizer(context_length=getattr(clip_model, "context_length", 77))
            text_embeddings = encode_text_embeddings(self.clip, tokenizer, queries)
        _require(
            text_embeddings.dim() == 2 and text_embeddings.shape[0] == len(queries),
            f"text_embeddings must be [Q={len(queries)}, d], got {tuple(text_embeddings.shape)}",
        )
        self.register_buffer("text_embeddings", F.normalize(text_embeddings.to(device).float(), dim=-1), persistent=False)

    @property
    def num_classes(self) -> int:
        return len(self.vocabulary)

    @property
    def device(self) -> torch.device:
        """The device of the CLIP weights: inputs go there (buffers follow every ``.to()``)."""
        return next(self.clip.parameters()).device

    @property
    def effective_window_batch_size(self) -> int:
        """``window_batch_size``, or its device default (8 on GPU, 1 on CPU) when it is ``None``."""
        return self.window_batch_size or (8 if self.device.type == "cuda" else 1)

    # ----------------------------------------------------------------------------------- windows
    def dense_embeddings(self, crops: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Per-token image embeddings of a batch of windows.

        Args:
            crops: [B, 3, h, w] RGB in [0, 1].
        Returns:
            [B, N, d] embeddings (not normalised) and their grid (H, W), N = H*W: the VFM grid for
            ``proxy``/``vfm``, the CLIP grid (h//p, w//p) for the baselines.
        """
        visual = self.clip.visual
        tokens, clip_grid = tokens_before_last_block(visual, normalize(crops, CLIP_MEAN, CLIP_STD))
        if self.attention == "maskclip":
            return maskclip_embeddings(visual, tokens), clip_grid
        if self.attention == "clip":
            return vanilla_embeddings(visual, tokens), clip_grid

        values = last_block_values(visual, tokens)[:, 1:]
        batch, width = values.shape[0], values.shape[-1]
        if self.attention == "proxy":
            features = vfm_features(self.vfm, self.vfm_kind, crops, self.slide_crop)
            grid = tuple(features.shape[-2:])
            attn = proxy_attention(features.flatten(2).transpose(1, 2), self.beta, self.gamma, self.normalize, self.mask)
        else:
            attn, grid = vfm_raw_attention(self.vfm, self.vfm_kind, crops, self.slide_crop)
        values = values.transpose(1, 2).reshape(batch, width, *clip_grid)
        values = F.interpolate(values, size=grid, mode="bilinear", align_corners=False)
        values = values.flatten(2).transpose(1, 2)
        mixed = torch.bmm(attn.to(values.dtype), values)
        return project_tokens(visual, mixed), grid

    @torch.no_grad()
    def grid_logits(self, crops: torch.Tensor) -> torch.Tensor:
        """Raw cosine logits of a batch of windows on the feature grid.

        Args:
            crops: [B, 3, h, w] RGB in [0, 1] (not normalised).
        Returns:
            [B, Q, H, W] cosine similarities in [-1, 1] (float32 by default) on the VFM grid (CLIP grid
            for the baselines).
        """
        if crops.dim() != 4 or crops.shape[1] != 3:
            raise ValueError(f"crops must be [B, 3, h, w], got {tuple(crops.shape)}")
        crops = crops.to(self.device)
        embeddings, grid = self.dense_embeddings(crops)
        with autocast_off(crops.device):
            embeddings = F.normalize(embeddings.to(self.text_embeddings.dtype), dim=-1)
            logits = (embeddings @ self.text_embeddings.T).transpose(1, 2)
            return logits.reshape(crops.shape[0], -1, *grid)

    @torch.no_grad()
    def crop_logits(self, crops: torch.Tensor) -> torch.Tensor:
        """Raw cosine logits of a batch of windows.

        Args:
            crops: [B, 3, h, w] RGB in [0, 1] (not normalised).
        Returns:
            [B, Q, h, w] cosine similarities (dtype of the text embeddings, float32 by default), bilinearly
            upsampled from the feature grid.
        """
        return F.interpolate(self.grid_logits(crops), size=crops.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def slide_logits(self, image: torch.Tensor) -> torch.Tensor:
        """Sliding-window logits averaged over windows (raw cosine, before any softmax).

        Args:
            image: [1, 3, H, W] RGB in [0, 1], already resized to the test scale.
        Returns:
            [1, Q, H, W] float32.
        """
        return sliding_window_logits(
            image.to(self.device),
            self.grid_logits,
            num_queries=len(self.queries),
            crop=self.slide_crop,
            stride=self.slide_stride,
            window_batch_size=self.effective_window_batch_size,
            pad_value=CLIP_MEAN,
        )

    # ------------------------------------------------------------------------------------ images
    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """uint8 HxWx3 RGB (or gray/RGBA/16-bit) at original size -> [1, 3, h, w] in [0, 1], resized."""
        from datamodules.resize import resize_short_side

        resized = resize_short_side(to_rgb_uint8(image), self.short_side, self.long_side_cap)
        return torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)[None].to(self.device).float() / 255.0

    @torch.no_grad()
    def segment_resized(self, image: torch.Tensor, size: tuple[int, int], prob_thd: float | None = None) -> torch.Tensor:
        """Label map of an image already resized to the test scale.

        Args:
            image: [1, 3, h, w] RGB in [0, 1] (e.g. a datamodule sample / 255).
            size: the original (H0, W0); the logits are upsampled bilinearly to it before post-processing.
            prob_thd: overrides the model's threshold.
        Returns:
            LongTensor [H0, W0] of class ids in [0, C).
        """
        thd = self.prob_thd if prob_thd is None else prob_thd
        logits = self.slide_logits(image)[0]
        return logits_to_labels(logits, self.query_to_class, self.logit_scale, thd, size=tuple(size))

    @torch.no_grad()
    def predict(self, image: np.ndarray) -> torch.Tensor:
        """Segment one image.

        Args:
            image: numpy HxWx3 uint8 RGB at its original size (gray, RGBA and 16-bit are converted).
        Returns:
            LongTensor [H, W] of class ids in [0, C), on the model's device.
        """
        rgb = to_rgb_uint8(image)
        return self.segment_resized(self.preprocess(rgb), rgb.shape[:2])
