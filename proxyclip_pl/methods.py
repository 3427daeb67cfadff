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
from .native_protocols import OFFICIAL_MEAN, OFFICIAL_STD, MethodInfo, Protocol
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


#: Provenance of each method: the official repository and commit, the files read, and every difference from
#: this package's ProxyCLIP.
_COMMON_DIFFERENCES = (
    "input normalisation: mean/std (122.771, 116.746, 104.094)/(68.501, 66.632, 70.323) on 0-255 RGB, i.e. "
    "CLIP's constants rounded to 3 decimals after x255 (ProxyCLIP here: the unrounded CLIP constants; relative "
    "difference < 1e-5)",
    "positional embedding: same bicubic +0.1 scale-factor rule as ProxyCLIP, but skipped whenever gh*gw equals "
    "the table's patch count even for a non-square grid, and computed in the model dtype "
    "(proxyclip_pl.method_positional.official_pos_embed)",
    "no VFM: the last CLIP block itself is modified; features on the CLIP grid (stride 16)",
)

#: What NACLIP inherits from SCLIP's code base: input normalisation, class-name files, PAMR, no window padding.
_SCLIP_LINEAGE = dict(
    mean=OFFICIAL_MEAN,
    std=OFFICIAL_STD,
    synonym_separator=", ",
    pamr_dilations=(8, 16),
    window_padding="none: the conv floors the grid and the logits are stretched bilinearly over the window",
)

SCLIP_INFO = MethodInfo(
    repository="wangf3014/SCLIP",
    commit="b56bd3014b9e8a3ee3450bcfc53700a67d627b7a",
    files=("clip/model.py", "clip_segmentor.py", "pamr.py", "configs/base_config.py", "configs/cfg_*.py",
           "configs/cls_*.txt"),
    **_SCLIP_LINEAGE,
    precision="fp16 (OpenAI clip.load on CUDA)",
    differences_from_proxyclip=_COMMON_DIFFERENCES + (
        "last block: correlative self-attention, residuals and MLP kept",
        "windows 224/112 instead of 336/112; test short side 336 (coco_stuff 448, cityscapes 560)",
        "logit scale 40 except voc21 65, context60/coco_object 50",
        "prob_thd 0.1 on voc21/context60/coco_object (ProxyCLIP 0.2/0.15/0.25)",
        "area_thd 0.1 on voc21 (foreground classes covering <= 10% of the predicted foreground are dropped)",
        "class-name files split on ', ' (ProxyCLIP's: '; '); different synonym lists, e.g. a 26-name "
        "background line also for coco_object (read under --protocol native)",
    ),
)


NACLIP_INFO = MethodInfo(
    repository="sinahmr/NACLIP",
    commit="0cac3a651f753b11315ea799cfbfabf79da1bd76",
    files=("clip/model.py", "naclip.py", "pamr.py", "eval.py", "test_all.sh", "configs/base_config.py",
           "configs/cfg_*.py", "configs/cls_*.txt"),
    **_SCLIP_LINEAGE,
    precision="fp16 (OpenAI clip.load on CUDA); PAMR affinities in fp32",
    differences_from_proxyclip=_COMMON_DIFFERENCES + (
        "last block: k-k attention plus a Gaussian neighbourhood bias (std 5), no residual, no MLP",
        "voc21/voc20: whole image, no sliding window; elsewhere windows 224/112",
        "test short side 336 everywhere except cityscapes 560",
        "PAMR (10 steps, dilations 8 and 16) on the raw logits at the original size",
        "prob_thd 0.1 on voc21/context60/coco_object",
        "class-name files split on ', ' (ProxyCLIP's: '; '); SCLIP's files (read under --protocol native)",
    ),
)


CLEARCLIP_INFO = MethodInfo(
    repository="mc-lan/ClearCLIP",
    commit="ad68a404d55d48d27330b93554eb64a234ff717f",
    files=("open_clip/transformer.py", "open_clip/model.py", "clearclip_segmentor.py", "configs/base_config.py",
           "configs/cfg_*.py", "configs/cls_*.txt", "demo.py"),
    mean=OFFICIAL_MEAN,
    std=OFFICIAL_STD,
    synonym_separator=",",
    pamr_dilations=(),
    precision="fp16 (open_clip precision='fp16', inputs .half())",
    window_padding="zero padding in normalised space (= mean colour) up to a multiple of the patch size, "
    "split left/top = total // 2; the logits are cropped back",
    differences_from_proxyclip=_COMMON_DIFFERENCES + (
        "last block: q-q attention, no residual, no MLP",
        "windows 448/224 (cityscapes 224/224: no overlap); test short side 448 everywhere",
        "logit scale 50",
        "prob_thd 0.5 voc21, 0.15 context60, 0.4 coco_object",
        "class-name files: one name per class, no synonyms (split on ',' but no line has one); "
        "VOC21/Context60/COCO-Object background is the single word 'background'",
        "configs/base_config.py ships model_type='vanilla'; ClearCLIP needs model_type='ClearCLIP'",
    ),
)


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
#: numbers from each repository, provenance (``*_INFO``: the files read).
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
    info=SCLIP_INFO,
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
    info=NACLIP_INFO,
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
    info=CLEARCLIP_INFO,
    source="mc-lan/ClearCLIP@ad68a40; published: assets/results.png (paper Table 2, 'CLIP +ClearCLIP', ViT-B); the "
    "three benchmarks with background are not in the repository",
    description="q-q attention without residual and MLP",
)
