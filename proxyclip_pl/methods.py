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

from typing import Sequence

import torch
from torch import nn

from .correlative_attention import sclip_embeddings
from .method_positional import official_tokens_before_last_block
from .native_protocols import METHODS, NATIVE_PROTOCOLS, OFFICIAL_MEAN, OFFICIAL_STD, REPORTED_MIOU
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


def _spec(name: str, segmenter: type, description: str) -> MethodSpec:
    info, reported = METHODS[name], REPORTED_MIOU[name]
    return MethodSpec(name, segmenter, protocols=NATIVE_PROTOCOLS[name], published=reported.miou,
                      source=f"{info.repository}@{info.commit[:7]}; published: {reported.source}",
                      description=description)


#: The registry entries of this module's methods (:data:`proxyclip_pl.registry.BUILTIN_METHOD_SPECS`).
SCLIP_SPEC = _spec("sclip", SCLIP, "correlative self-attention in CLIP's last block")
NACLIP_SPEC = _spec("naclip", NACLIP, "neighbourhood-biased k-k attention, reduced last block, PAMR")
CLEARCLIP_SPEC = _spec("clearclip", ClearCLIP, "q-q attention without residual and MLP")
