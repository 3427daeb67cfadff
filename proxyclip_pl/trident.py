"""Trident (ICCV 2025, YuHengsss/Trident): splice-then-segment.

CLIP and DINO run on sliding windows of the image; per window, CLIP's last-block values are re-aggregated by a
proxy attention from DINO's patch similarities (mean over ALL windows of the image); the window features are
spliced onto one canvas (averaged where windows overlap); SAM's encoder, run once on the whole image, gives an
affinity over its grid (:mod:`proxyclip_pl.sam_affinity`) that re-aggregates the canvas; ``ln_post`` and ``proj``
give the embeddings matched against the text. Post-processing is the core's (bilinear to the original size,
softmax of ``logit_scale`` x logits, max over synonyms, argmax, ``prob_thd``). docs/methods.md, 'Trident'.
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datamodules.io import array_to_rgb_uint8 as to_rgb_uint8

from .clip_encoder import last_block_values
from .method_positional import official_tokens_before_last_block
from .native_protocols import OFFICIAL_MEAN, OFFICIAL_STD, MethodInfo, Protocol
from .proxy_attention import cosine_similarity_matrix
from .registry import MethodSpec
from .sam_affinity import check_sam_encoder, sam_part_affinity
from .segmenter import Segmenter, _require
from .sliding_window import window_grid
from .vfm import VFM_KINDS, check_vfm, vfm_features

CITYSCAPES = "CityscapesDataset"


def ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def processed_size(height: int, width: int, patch: int, slide_crop: int) -> tuple[int, int]:
    """Trident's ``preprocess_image`` size: unchanged when both sides are multiples of ``patch``, else the long side
    up to a multiple of ``patch``, the other scaled (truncated) and rounded up, each side at least ``slide_crop``."""
    if height % patch == 0 and width % patch == 0:
        return height, width
    longer = max(height, width)
    target = ceil_to(longer, patch)
    new_h, new_w = ceil_to(int(height * target / longer), patch), ceil_to(int(width * target / longer), patch)
    return max(new_h, slide_crop), max(new_w, slide_crop)


def splice(features: torch.Tensor, boxes: Sequence[tuple[int, int, int, int]], size: tuple[int, int],
           patch: int, clip_grid: int) -> torch.Tensor:
    """Window features onto one canvas, averaged where windows overlap.

    Args:
        features: [B, D, g, g] window features on the VFM grid (one per box).
        boxes: (y1, y2, x1, x2) pixel boxes of the windows, multiples of ``patch``.
        size: the processed image (H', W').
        patch: CLIP's patch size; ``clip_grid``: CLIP's grid side of a window.
    Returns:
        [1, D, H'/patch * r, W'/patch * r], r = VFM cells per CLIP patch (features resized to clip_grid * r
        when the VFM grid is not a multiple of the CLIP grid).
    """
    if features.shape[-1] % clip_grid != 0:
        ratio = int(round(features.shape[-2] / clip_grid))
        features = F.interpolate(features, size=(clip_grid * ratio, clip_grid * ratio), mode="bilinear",
                                 align_corners=False)
    else:
        ratio = features.shape[-1] // clip_grid
    rows, cols = size[0] // patch * ratio, size[1] // patch * ratio
    canvas = features.new_zeros(1, features.shape[1], rows, cols)
    count = features.new_zeros(1, 1, rows, cols)
    for feature, (y1, y2, x1, x2) in zip(features, boxes):
        y1, y2, x1, x2 = (c // patch * ratio for c in (y1, y2, x1, x2))
        canvas[0, :, y1:y2, x1:x2] += feature
        count[:, :, y1:y2, x1:x2] += 1
    return canvas / count


class Trident(Segmenter):
    """Trident around an open_clip CLIP, a timm DINO ViT and a timm SAM image encoder (``samvit``).

    Args:
        clip_model: an ``open_clip.CLIP`` with a ViT image tower (OpenAI weights need QuickGELU).
        vocabulary: one entry per class, synonyms inside.
        vfm: timm DINO ViT (official: ``vit_base_patch16_224.dino``); its final-normed patch tokens.
        sam: timm samvit (official: ``samvit_base_patch16.sa1b`` with LayerNorm eps 1e-6,
            :func:`proxyclip_pl.towers.build_sam`).
        beta, gamma: proxy attention ``softmax(gamma * (S - beta * mean(S)))``, negatives masked; the mean is over
            every window of the image.
        cos_fac, refine_neg_cos: SAM correlation filter (:func:`proxyclip_pl.sam_affinity.correlation_filter`).
        dataset_type: ``"CityscapesDataset"`` runs SAM on the left and right halves; anything else: whole image.
        sam_refinement: the official SAM-prompt refinement needs SAM's prompt encoder and mask decoder (not in
            timm): only ``False`` is accepted.
        vfm_kind: the VFM recipe (``dino``: the official one).
        segmenter_kwargs: the core's settings (:class:`~proxyclip_pl.segmenter.Segmenter`); defaults: windows
            336/112, short side 336 (the class defaults of the official constructor).
    """

    method = "trident"
    # CLIP input: open_clip's exact mean/std (the core's); DINO gets the [0, 1] window ImageNet-normalised, which is
    # the official CLIP input un-normalised with these constants
    encoder_settings = ("vfm_kind", "beta", "gamma", "cos_fac", "refine_neg_cos", "dataset_type")
    uses_original_image = True
    protocol_options = ("cos_fac", "refine_neg_cos", "dataset_type")

    def __init__(self, clip_model: nn.Module, vocabulary: Sequence[Sequence[str]], *, vfm: nn.Module,
                 sam: nn.Module, beta: float = 1.2, gamma: float = 3.0, cos_fac: float = 1.2,
                 refine_neg_cos: bool = True, dataset_type: str = "PascalVOCDataset", sam_refinement: bool = False,
                 vfm_kind: str = "dino", slide_crop: int = 336, slide_stride: int = 112, short_side: int = 336,
                 **segmenter_kwargs: Any) -> None:
        _require(not sam_refinement, "sam_refinement=True needs SAM's prompt encoder and mask decoder, which this "
                 "package does not build (timm's samvit is the image encoder only); use sam_refinement=False")
        _require(vfm_kind in VFM_KINDS, f"unknown vfm_kind {vfm_kind!r}; expected one of {', '.join(VFM_KINDS)}")
        _require(beta > 0 and gamma > 0, f"beta and gamma must be positive, got {beta}, {gamma}")
        _require(slide_crop > 0, f"Trident needs windows: slide_crop must be positive, got {slide_crop}")
        _require(vfm is not None and sam is not None, "Trident needs a VFM (DINO) and a SAM image encoder")
        check_vfm(vfm, vfm_kind)
        check_sam_encoder(sam)
        super().__init__(clip_model, vocabulary, slide_crop=slide_crop, slide_stride=slide_stride,
                         short_side=short_side, **segmenter_kwargs)
        _require(slide_crop % self.patch == 0 and slide_stride % self.patch == 0,
                 f"slide_crop ({slide_crop}) and slide_stride ({slide_stride}) must be multiples of CLIP's patch "
                 f"size {self.patch}")
        self.vfm = vfm.eval().requires_grad_(False)
        self.sam = sam.eval().requires_grad_(False)
        self.vfm_kind = vfm_kind
        self.beta, self.gamma = float(beta), float(gamma)
        self.cos_fac, self.refine_neg_cos = float(cos_fac), bool(refine_neg_cos)
        self.dataset_type = str(dataset_type)

    @property
    def patch(self) -> int:
        """CLIP's patch size (the official ``clip_stride``)."""
        return int(self.clip.visual.conv1.kernel_size[0])

    @classmethod
    def from_towers(cls, towers: dict[str, Any], vocabulary: Sequence[Sequence[str]], **kwargs: Any) -> "Trident":
        return cls(towers["clip"], vocabulary, vfm=towers["vfm"], sam=towers["sam"], **kwargs)

    # ------------------------------------------------------------------------------------ inputs
    def image_inputs(self, original: np.ndarray, image_id: str | None = None, **given: Any) -> dict[str, Any]:
        """``{"original": uint8 HxWx3}``: SAM reads the original image."""
        return {"original": to_rgb_uint8(original), **given}

    @torch.no_grad()
    def sam_affinity(self, original: np.ndarray) -> list[tuple[torch.Tensor, tuple[int, int]]]:
        """SAM affinity of the original uint8 HxWx3 RGB image: one ``([N, N], (gh, gw))`` per part (the whole image,
        or its left and right halves for Cityscapes), after resizing it (OpenCV bilinear) to multiples of CLIP's
        patch size as the official code does."""
        import cv2

        rgb = to_rgb_uint8(original)
        height, width = ceil_to(rgb.shape[0], self.patch), ceil_to(rgb.shape[1], self.patch)
        rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)
        parts = [rgb[:, :width // 2], rgb[:, width // 2:]] if self.dataset_type == CITYSCAPES else [rgb]
        return [sam_part_affinity(self.sam, part, self.cos_fac, self.refine_neg_cos) for part in parts]

    # ------------------------------------------------------------------------------------ windows
    @torch.no_grad()
    def window_features(self, windows: torch.Tensor) -> torch.Tensor:
        """Proxy-attended CLIP values of ALL windows of one image (the attention's mean is over the whole batch).

        Args:
            windows: [B, 3, c, c] RGB in [0, 1], sides multiples of CLIP's patch size.
        Returns:
            [B, D, g, g] ``out_proj(A v)`` on the VFM grid (no residual, MLP or ``ln_post``).
        """
        windows = windows.to(self.device)
        step = self.effective_window_batch_size
        chunks = [windows[i:i + step] for i in range(0, windows.shape[0], step)]
        similarity = torch.cat([self._similarity(chunk) for chunk in chunks])
        # one mean over every window of the image (torch.mean of the whole [B, N, N] batch, as the official code)
        logits = (similarity - similarity.mean() * self.beta) * self.gamma
        logits = logits.masked_fill(logits < 0.0, float("-inf")).softmax(dim=-1)
        outputs = []
        for start, chunk in zip(range(0, windows.shape[0], step), chunks):
            outputs.append(self._aggregate(chunk, logits[start:start + chunk.shape[0]]))
            self.windows_encoded += chunk.shape[0]
        return torch.cat(outputs)

    def _similarity(self, windows: torch.Tensor) -> torch.Tensor:
        features = vfm_features(self.vfm, self.vfm_kind, windows, self.slide_crop)
        return cosine_similarity_matrix(features.flatten(2).transpose(1, 2))

    def _aggregate(self, windows: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        visual = self.clip.visual
        tokens, clip_grid = official_tokens_before_last_block(visual, self.normalize_input(windows))
        values = last_block_values(visual, tokens)[:, 1:]
        batch, width = values.shape[0], values.shape[-1]
        grid = math.isqrt(attention.shape[-1])
        values = values.transpose(1, 2).reshape(batch, width, *clip_grid)
        values = F.interpolate(values, size=(grid, grid), mode="bilinear", align_corners=False)
        mixed = torch.bmm(attention.to(values.dtype), values.flatten(2).transpose(1, 2))
        mixed = visual.transformer.resblocks[-1].attn.out_proj(mixed)
        return mixed.transpose(1, 2).reshape(batch, width, grid, grid)

    # ------------------------------------------------------------------------------------ image
    def image_logits(self, image: torch.Tensor, match: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor],
                     num_queries: int, original: np.ndarray | None = None, **inputs: Any) -> torch.Tensor:
        """Windows -> splice -> SAM aggregation -> ``ln_post``/``proj`` -> ``match``.

        Args:
            image: [1, 3, H, W] RGB in [0, 1], resized to the test scale.
            original: the original uint8 HxWx3 RGB image (SAM's input).
        Returns:
            [1, num_queries, gh, gw] raw cosine logits on SAM's valid grid (Cityscapes: both halves side by side).
        """
        _require(original is not None, "Trident needs the original image for SAM: pass original=<uint8 HxWx3> "
                 "(predict() and the evaluator do)")
        height, width = image.shape[-2:]
        size = processed_size(height, width, self.patch, self.slide_crop)
        _require(min(size) >= self.slide_crop, f"Trident needs both sides of the resized image ({height}x{width}) >= "
                 f"slide_crop ({self.slide_crop}) (the official code fails here); raise short_side")
        if size != (height, width):
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        boxes = window_grid(*size, self.slide_crop, self.slide_stride)
        windows = torch.cat([image[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])
        canvas = splice(self.window_features(windows), boxes, size, self.patch, self.slide_crop // self.patch)
        affinities = self.sam_affinity(original)
        halves = [canvas] if len(affinities) == 1 else [canvas[..., :canvas.shape[-1] // 2],
                                                        canvas[..., canvas.shape[-1] // 2:]]
        visual = self.clip.visual
        logits = []
        for part, (affinity, grid) in zip(halves, affinities):
            part = F.interpolate(part, size=grid, mode="bilinear", align_corners=False)
            tokens = affinity.to(part.dtype) @ part.flatten(2)[0].T
            embeddings = visual.ln_post(tokens) @ visual.proj
            logits.append(match(embeddings[None], grid).float())
        return torch.cat(logits, dim=-1)


TRIDENT_INFO = MethodInfo(
    repository="YuHengsss/Trident",
    commit="a93b346d1b1dc55bc6f547da5b7d361ad449ae44",
    files=("trident.py", "open_clip/transformer.py", "seg_utils/utils.py", "segment_anything/modeling/image_encoder.py",
           "segment_anything/predictor.py", "segment_anything/utils/transforms.py", "configs/base_config.py",
           "configs/cfg_*.py", "configs/cls_*.txt"),
    mean=OFFICIAL_MEAN,
    std=OFFICIAL_STD,
    synonym_separator="; ",
    pamr_dilations=(8, 16),
    precision="fp16 (open_clip precision='fp16', DINO and SAM .half())",
    window_padding="none in practice: the image is resized so that both sides are multiples of the patch size and "
    "at least slide_crop, and windows never need the 56-padding",
    differences_from_proxyclip=(
        "whole-image: windows' proxy-attended CLIP values spliced onto one canvas, then re-aggregated by SAM's "
        "last-block attention over the whole image (filtered by value cosine), then ln_post/proj",
        "proxy attention mean over ALL windows of the image (ProxyCLIP: per window); DINO ViT-B/16 final-normed "
        "patch tokens",
        "test short side 448 voc21/coco_object/coco_stuff, 576 context/ade20k, 336 voc20, 688 cityscapes; windows "
        "336/224 (voc20 336/112)",
        "SAM correlation: cos_fac 1.2 (voc20 0.0, cityscapes 3.0); refine_neg_cos False on cityscapes and ade20k; "
        "cityscapes runs SAM on the two halves",
        "SAM-prompt refinement (--sam_refine in the README) is not built here",
        "here: CLIP input normalised with open_clip's exact constants (official: the x255-rounded ones, relative "
        "difference < 1e-5)",
    ),
)


def _trident(short_side: int, prob_thd: float = 0.0, stride: int = 224, cos_fac: float = 1.2,
             refine_neg_cos: bool = True, dataset_type: str = "PascalVOCDataset") -> Protocol:
    return Protocol(short_side, 2048, 336, stride, 40.0, prob_thd, None, 0,
                    options=(("cos_fac", cos_fac), ("refine_neg_cos", refine_neg_cos), ("dataset_type", dataset_type)))


TRIDENT_SPEC = MethodSpec(
    "trident", Trident, towers=("clip", "vfm", "sam"),
    protocols=MappingProxyType({
        "voc21": _trident(448, prob_thd=0.2), "context60": _trident(576, prob_thd=0.15),
        "coco_object": _trident(448, prob_thd=0.25), "voc20": _trident(336, stride=112, cos_fac=0.0),
        "context59": _trident(576), "coco_stuff": _trident(448),
        "cityscapes": _trident(688, cos_fac=3.0, refine_neg_cos=False, dataset_type=CITYSCAPES),
        "ade20k": _trident(576, refine_neg_cos=False),
    }),
    published=MappingProxyType({"voc21": 67.1, "context60": 38.6, "coco_object": 41.1, "voc20": 84.5,
                                "context59": 42.2, "coco_stuff": 28.3, "cityscapes": 42.9, "ade20k": 21.9}),
    info=TRIDENT_INFO,
    default_towers=MappingProxyType({"clip_weights": "openai", "vfm": "vit_base_patch16_224.dino",
                                     "sam": "samvit_base_patch16.sa1b"}),
    source="YuHengsss/Trident@a93b346; published: README results (assets/data_result.png), CLIP ViT-B/16; the "
    "README evaluates with --sam_refine, which is not built here: expect lower numbers",
    description="splice-then-segment: windows spliced, re-aggregated by SAM's whole-image attention (ICCV 2025)",
)
