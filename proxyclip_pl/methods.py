"""SCLIP, NACLIP and ClearCLIP as segmenters of the shared core (see docs/methods.md).

Each class supplies its last-block embeddings (the math modules) and the official input handling:

* the official positional rule (:func:`proxyclip_pl.method_positional.official_tokens_before_last_block`);
* the official mmseg normalisation (CLIP's mean/std x 255 rounded to 3 decimals, here in [0, 1] units);
* the official window padding: none for SCLIP and NACLIP (the conv floors the grid, the logits are stretched
  over the window), a multiple of 16 with the mean colour for ClearCLIP (logits cropped back).

Everything else (text embeddings, windows or whole image with ``slide_crop=0``, PAMR, ``area_thd``,
``prob_thd``) is the core's, driven by the constructor keywords, i.e. by a
:class:`~proxyclip_pl.native_protocols.Protocol` (:func:`proxyclip_pl.segmenter.protocol_kwargs`).
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Sequence

import torch
from torch import nn

from .correlative_attention import sclip_embeddings
from .method_positional import official_tokens_before_last_block
from .native_protocols import OFFICIAL_MEAN, OFFICIAL_STD, Protocol
from .registry import MethodSpec
from .neighbourhood_attention import GAUSSIAN_STD, naclip_embeddings
from .segmenter import Segmenter
from .self_self_attention import clearclip_embeddings

#: The official 0-255 normalisation in [0, 1] units.
OFFICIAL_MEAN_01 = tuple(m / 255.0 for m in OFFICIAL_MEAN)
OFFICIAL_STD_01 = tuple(s / 255.0 for s in OFFICIAL_STD)


class _OfficialCLIPMethod(Segmenter):
    """Common input handling of SCLIP, NACLIP and ClearCLIP: official normalisation and positional rule."""

    mean = OFFICIAL_MEAN_01
    std = OFFICIAL_STD_01
    pad_multiple = 1

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        return official_tokens_before_last_block(self.clip.visual, x)


class SCLIP(_OfficialCLIPMethod):
    """SCLIP (wangf3014/SCLIP): correlative self-attention in the last block, residuals and MLP kept;
    optional ``area_thd`` filter and PAMR. Keywords as :class:`~proxyclip_pl.segmenter.Segmenter`."""

    method = "sclip"

    def dense_embeddings(self, windows: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        tokens, grid = self.tokens(self.normalize_input(windows))
        return sclip_embeddings(self.clip.visual, tokens, grid), grid


class NACLIP(_OfficialCLIPMethod):
    """NACLIP (sinahmr/NACLIP): k-k attention plus a Gaussian neighbourhood bias in a reduced last block
    (no residual, no MLP). Keywords as :class:`~proxyclip_pl.segmenter.Segmenter`, plus:

    Args:
        arch: only ``"reduced"`` (the published setting) is supported.
        attn_strategy: only ``"naclip"`` is supported.
        gaussian_std: standard deviation of the neighbourhood bias, in patches.
    """

    method = "naclip"
    encoder_settings = ("arch", "attn_strategy", "gaussian_std")
    ARCHS = ("reduced",)
    ATTN_STRATEGIES = ("naclip",)

    def __init__(self, clip_model: nn.Module, vocabulary: Sequence[Sequence[str]], *, arch: str = "reduced",
                 attn_strategy: str = "naclip", gaussian_std: float = GAUSSIAN_STD, **kwargs) -> None:
        if arch not in self.ARCHS:
            raise ValueError(f"NACLIP arch {arch!r} is not supported; supported: {', '.join(self.ARCHS)}")
        if attn_strategy not in self.ATTN_STRATEGIES:
            raise ValueError(f"NACLIP attn_strategy {attn_strategy!r} is not supported; supported: "
                             f"{', '.join(self.ATTN_STRATEGIES)}")
        if not gaussian_std > 0:
            raise ValueError(f"gaussian_std must be positive, got {gaussian_std}")
        super().__init__(clip_model, vocabulary, **kwargs)
        self.arch, self.attn_strategy, self.gaussian_std = arch, attn_strategy, float(gaussian_std)

    def dense_embeddings(self, windows: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        tokens, grid = self.tokens(self.normalize_input(windows))
        return naclip_embeddings(self.clip.visual, tokens, grid, self.gaussian_std), grid


class ClearCLIP(_OfficialCLIPMethod):
    """ClearCLIP (mc-lan/ClearCLIP): q-q attention in the last block, no residual, no MLP; windows padded
    to a multiple of 16. Keywords as :class:`~proxyclip_pl.segmenter.Segmenter`."""

    method = "clearclip"
    pad_multiple = 16

    def dense_embeddings(self, windows: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        tokens, grid = self.tokens(self.normalize_input(windows))
        return clearclip_embeddings(self.clip.visual, tokens, grid), grid


def _sclip(short_side: int, logit_scale: float = 40.0, prob_thd: float = 0.0,
           area_thd: float | None = None) -> Protocol:
    # CLIPForSegmentation defaults: slide_crop=224, slide_stride=112, logit_scale=40, prob_thd=0, area_thd=None,
    # pamr_steps=0
    return Protocol(short_side, 2048, 224, 112, logit_scale, prob_thd, area_thd, 0)


def _naclip(short_side: int, prob_thd: float = 0.0, slide_crop: int = 224) -> Protocol:
    # NACLIP defaults: slide_crop=224, slide_stride=112, logit_scale=40, prob_thd=0; PAMR on -> 10 steps
    return Protocol(short_side, 2048, slide_crop, 112, 40.0, prob_thd, None, 10)


def _clearclip(prob_thd: float = 0.0, slide_crop: int = 448) -> Protocol:
    # ClearCLIPSegmentation defaults: slide_crop=448, slide_stride=224, logit_scale=50, prob_thd=0; resize 448
    return Protocol(448, 2048, slide_crop, 224, 50.0, prob_thd, None, 0)


#: The registry entries of this module's methods (:data:`proxyclip_pl.registry.BUILTIN_METHOD_SPECS`): native
#: protocols from the official ``configs/cfg_<dataset>.py`` on each segmentor's constructor defaults, published
#: numbers from each repository (:data:`~proxyclip_pl.native_protocols.METHODS` holds the files read).
SCLIP_SPEC = MethodSpec(
    "sclip", SCLIP,
    protocols=MappingProxyType({
        "voc21": _sclip(336, logit_scale=65.0, prob_thd=0.1, area_thd=0.1),
        "context60": _sclip(336, logit_scale=50.0, prob_thd=0.1),
        "coco_object": _sclip(336, logit_scale=50.0, prob_thd=0.1),
        "voc20": _sclip(336), "context59": _sclip(336), "coco_stuff": _sclip(448), "cityscapes": _sclip(560),
        "ade20k": _sclip(336),
    }),
    published=MappingProxyType({
        "voc21": 59.63, "context60": 31.74, "coco_object": 33.52, "voc20": 81.54,
        "context59": 34.46, "coco_stuff": 22.77, "cityscapes": 32.34, "ade20k": 16.45,
    }),
    source="wangf3014/SCLIP@b56bd30; published: README.md, 'Results' table (default setup of the repository)",
    description="correlative self-attention in CLIP's last block",
)
NACLIP_SPEC = MethodSpec(
    "naclip", NACLIP,
    protocols=MappingProxyType({
        "voc21": _naclip(336, prob_thd=0.1, slide_crop=0), "context60": _naclip(336, prob_thd=0.1),
        "coco_object": _naclip(336, prob_thd=0.1), "voc20": _naclip(336, slide_crop=0), "context59": _naclip(336),
        "coco_stuff": _naclip(336), "cityscapes": _naclip(560), "ade20k": _naclip(336),
    }),
    published=MappingProxyType({
        "voc21": 64.07, "context60": 34.99, "coco_object": 36.19, "voc20": 83.03,
        "context59": 38.35, "coco_stuff": 25.69, "cityscapes": 38.27, "ade20k": 19.05,
    }),
    source="sinahmr/NACLIP@0cac3a6; published: README.md, 'Results' table (default setup, PAMR on; paper v2 / "
    "WACV 2025 code)",
    description="neighbourhood-biased k-k attention, reduced last block, PAMR",
)
CLEARCLIP_SPEC = MethodSpec(
    "clearclip", ClearCLIP,
    protocols=MappingProxyType({
        "voc21": _clearclip(prob_thd=0.5), "context60": _clearclip(prob_thd=0.15),
        "coco_object": _clearclip(prob_thd=0.4),
        "voc20": _clearclip(), "context59": _clearclip(), "coco_stuff": _clearclip(),
        "cityscapes": _clearclip(slide_crop=224), "ade20k": _clearclip(),
    }),
    published=MappingProxyType({
        "voc21": None, "context60": None, "coco_object": None, "voc20": 80.9,
        "context59": 35.9, "coco_stuff": 23.9, "cityscapes": 30.0, "ade20k": 16.7,
    }),
    source="mc-lan/ClearCLIP@ad68a40; published: assets/results.png (paper Table 2, 'CLIP +ClearCLIP', ViT-B); the "
    "three benchmarks with background are not in the repository",
    description="q-q attention without residual and MLP",
)
