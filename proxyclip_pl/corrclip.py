"""CorrCLIP (ICCV 2025, zdk258/CorrCLIP, ``CorrCLIPv1/``): reconstructing CLIP's patch correlations.

Per window: class-agnostic region masks (merged by DINO similarity, :mod:`proxyclip_pl.region_masks`) restrict
which patches attend to each other ("scope"), DINO's ``q + k`` similarities give the attention values ("value"),
which re-aggregate CLIP's last-block values of two branches (the last block's input, and the mean of some middle
blocks' outputs); a third branch reads one region token per mask (a copy of the class token that attends only to
its region). ``ln_post`` of each, summed with weights ``alpha``/``beta``, ``proj``, cosine logits. After the usual
post-processing every region of the original-size mask takes its most frequent class. docs/methods.md, 'CorrCLIP'.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datamodules.io import array_to_rgb_uint8 as to_rgb_uint8

from .clip_encoder import last_block_values
from .method_positional import official_pos_embed
from .native_protocols import OFFICIAL_MEAN, OFFICIAL_STD, MethodInfo, Protocol
from .region_masks import (PAD_REGION, InstanceMaskFolder, as_label_map, correct_by_regions, mask_source,
                           merge_regions)
from .registry import MethodSpec
from .segmenter import Segmenter, _require
from .sliding_window import (average_over_windows, pad_with_colour, symmetric_padding, upsample_and_crop,
                             window_grid)
from .vfm import _capture_last_attention_input, check_vfm, vfm_recipe

#: spatial-branch depth per CLIP depth (the official constants; other depths: depth - 4)
NUM_SPATIAL = MappingProxyType({12: 5, 24: 12, 32: 28})


def _nearest(label_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """int [h, w] -> int64 [H, W] with torch's ``nearest`` (not ``nearest-exact``), through float as the official."""
    return F.interpolate(label_map[None, None].float(), size=size, mode="nearest")[0, 0].long()


class CorrCLIP(Segmenter):
    """CorrCLIP around an open_clip CLIP, a timm DINO ViT and a mask provider.

    Args:
        clip_model: an ``open_clip.CLIP`` with a ViT image tower (MetaCLIP / OpenAI weights need QuickGELU).
        vocabulary: one entry per class, synonyms inside.
        vfm: timm DINO ViT with one class token (official: ``vit_base_patch8_224.dino`` = ``dino_vitb8``).
        mask_provider: ``provider(image, image_id) -> label map [H, W] or bool masks [M, H, W]``
            (:mod:`proxyclip_pl.region_masks`); ``None``: masks must be passed to :meth:`predict`.
        instance_mask_path: shortcut for ``mask_provider=InstanceMaskFolder(instance_mask_path)``.
        mask_folder: the benchmark's sub-folder of the cached masks (``voc``, ``context``, ``coco``, ``city``, ``ade``;
            the native row's under every protocol), read by :meth:`from_towers`.
        alpha, beta: weights of the spatial and semantic branches; ``tau``: temperature of the reconstructed
            attention; ``num_spatial``: blocks averaged by the spatial branch (``None``: :data:`NUM_SPATIAL`, else depth - 4, at
            least 1);
            ``dbscan_eps``: mask-merging distance.
        vfm_kind: ``dino`` (DINO's positional rule).
        segmenter_kwargs: the core's settings; defaults windows 336/112, short side 336.
    """

    method = "corrclip"
    # CLIP input: open_clip's exact mean/std (the core's), so that DINO's input, the official CLIP input
    # un-normalised with those constants, is the [0, 1] window itself, padding included
    pad_multiple = 56
    encoder_settings = ("vfm_kind", "mask_provider", "mask_folder", "alpha", "beta", "tau", "num_spatial", "dbscan_eps")
    uses_original_image = True
    protocol_options = data_options = ("mask_folder",)

    def __init__(self, clip_model: nn.Module, vocabulary: Sequence[Sequence[str]], *, vfm: nn.Module,
                 mask_provider: Callable[[np.ndarray, str | None], Any] | None = None,
                 instance_mask_path: str | None = None, mask_folder: str | None = None, alpha: float = 1.0, beta: float = 0.5, tau: float = 4.0,
                 num_spatial: int | None = None, dbscan_eps: float = 0.2, vfm_kind: str = "dino",
                 slide_crop: int = 336, slide_stride: int = 112, short_side: int = 336,
                 **segmenter_kwargs: Any) -> None:
        _require(vfm_kind == "dino", f"CorrCLIP reads DINO's q + k with DINO's positional rule: vfm_kind must be "
                 f"'dino', got {vfm_kind!r}")
        _require(vfm is not None, "CorrCLIP needs a VFM (DINO)")
        _require(mask_provider is None or instance_mask_path is None,
                 "pass either mask_provider or instance_mask_path, not both")
        _require(slide_crop > 0, f"CorrCLIP needs windows: slide_crop must be positive, got {slide_crop}")
        check_vfm(vfm, vfm_kind)
        super().__init__(clip_model, vocabulary, slide_crop=slide_crop, slide_stride=slide_stride,
                         short_side=short_side, **segmenter_kwargs)
        depth = len(self.clip.visual.transformer.resblocks)
        # other depths: depth - 4 (official), at least 1 (the official code fails on towers of < 5 blocks)
        num_spatial = NUM_SPATIAL.get(depth, max(1, depth - 4)) if num_spatial is None else int(num_spatial)
        _require(1 <= num_spatial <= depth - 2, f"num_spatial must lie in [1, {depth - 2}] for a {depth}-block CLIP, "
                 f"got {num_spatial} (pass num_spatial for a shallow tower)")
        self.vfm = vfm.eval().requires_grad_(False)
        self.vfm_kind = vfm_kind
        self.mask_provider = InstanceMaskFolder(instance_mask_path) if instance_mask_path else mask_provider
        self.mask_folder = mask_folder
        self.alpha, self.beta, self.tau = float(alpha), float(beta), float(tau)
        self.num_spatial, self.dbscan_eps = num_spatial, float(dbscan_eps)

    @classmethod
    def from_towers(cls, towers: dict[str, Any], vocabulary: Sequence[Sequence[str]], **kwargs: Any) -> "CorrCLIP":
        """``towers["masks"]`` is ``--masks`` (a folder, ``sam2`` or ``none``); ``mask_folder`` the benchmark's
        sub-folder of the cached masks (``voc``, ``context``, ``coco``, ``city``, ``ade``)."""
        provider = mask_source(towers["masks"], kwargs.get("mask_folder"))
        return cls(towers["clip"], vocabulary, vfm=towers["vfm"], mask_provider=provider, **kwargs)

    # ------------------------------------------------------------------------------------ inputs
    def image_inputs(self, original: np.ndarray, image_id: str | None = None, masks: Any = None,
                     **given: Any) -> dict[str, Any]:
        """``{"masks": int64 label map [H0, W0]}``: the given masks, else the provider's (called once)."""
        rgb = to_rgb_uint8(original)
        if masks is None:
            _require(self.mask_provider is not None, "CorrCLIP needs region masks: pass masks=... or build it with a "
                     "mask_provider / instance_mask_path")
            masks = self.mask_provider(rgb, image_id)
        return {"masks": as_label_map(masks, rgb.shape[:2], f"masks of image {image_id}"), **given}

    def predict(self, image: np.ndarray, masks: Any = None, image_id: str | None = None, **given: Any) -> torch.Tensor:
        """:meth:`Segmenter.predict` with the contract's order: ``masks`` (label map [H, W] or bool [M, H, W] at the
        image's size) if given, else ``mask_provider(image, image_id)``; ``ValueError`` if neither."""
        return super().predict(image, image_id, masks=masks, **given)

    # ------------------------------------------------------------------------------------ windows
    def _dino_features(self, windows: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """[B, 3, h, w] in [0, 1] -> L2-normalised ``q + k`` of DINO's last block [B, N, C], CLS dropped, and the grid."""
        recipe = vfm_recipe(self.vfm_kind)
        x = recipe.prepare(windows, self.slide_crop)
        grid: list[tuple[int, int]] = []
        inputs = _capture_last_attention_input(self.vfm, lambda: grid.append(recipe.tokens(self.vfm, x)[1]))
        qkv = self.vfm.blocks[-1].attn.qkv(inputs)
        q, k, _ = qkv.reshape(qkv.shape[0], qkv.shape[1], 3, -1).unbind(2)
        return F.normalize((q + k)[:, 1:], dim=-1), grid[0]

    def _run(self, block: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if getattr(self.clip.visual.transformer, "batch_first", True):
            return block(x, attn_mask=mask)
        return block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)

    def window_embeddings(self, window: torch.Tensor, regions: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Embeddings of ONE window (the official semantic branch handles one window at a time).

        Args:
            window: [1, 3, h, w] RGB in [0, 1] (padded; sides multiples of both patch sizes).
            regions: int [h, w] the window's region ids (padding: 10000).
        Returns:
            [1, N, d] embeddings on the DINO grid (gh, gw), not normalised.
        """
        features, grid = self._dino_features(window)
        features = features[0]
        similarity = features @ features.T
        regions = merge_regions(_nearest(regions, grid), features, self.dbscan_eps)
        # scope: same region, or (either patch in the smallest-id region and S above its mean)
        flat = regions.flatten()
        ids = torch.unique(flat)
        allowed = torch.zeros_like(similarity, dtype=torch.bool)
        for region in ids[1:]:
            member = flat == region
            allowed |= member[:, None] & member[None, :]
        rest = flat == ids[0]
        allowed |= (rest[:, None] | rest[None, :]) & (similarity > similarity.mean())
        attention = (similarity.masked_fill(~allowed, float("-inf")) * self.tau).softmax(dim=-1)

        visual = self.clip.visual
        x = visual.conv1(self.normalize_input(window).to(visual.conv1.weight.dtype))
        clip_grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.to(x.dtype).expand(1, 1, -1), x], dim=1)
        x = visual.ln_pre(visual.patch_dropout(x + official_pos_embed(visual.positional_embedding, *clip_grid).to(x.dtype)))
        clip_regions = _nearest(regions, clip_grid)
        members = torch.stack([clip_regions == i for i in torch.unique(clip_regions)]).flatten(1)  # [K, gh*gw]
        count = members.shape[0]
        x = torch.cat([x[:, :1].expand(1, count, -1), x], dim=1)  # K region tokens: copies of the class token
        length = x.shape[1]
        allowed = torch.zeros(length, length, dtype=torch.bool, device=x.device)
        allowed[count:, count:] = True
        allowed[:count, count] = True
        allowed[:count, count + 1:] = members
        # additive float mask: open_clip casts a bool mask to 0/1 instead of masking
        mask = torch.zeros(length, length, dtype=x.dtype, device=x.device).masked_fill(~allowed, float("-inf"))

        blocks = visual.transformer.resblocks
        depth, spatial = len(blocks), []
        for index, block in enumerate(blocks[:-1]):
            x = self._run(block, x, mask)
            if depth - 2 - self.num_spatial <= index <= depth - 3:
                spatial.append(x[:, count:])
        last = blocks[-1]
        branches = []
        for tokens in (x[:, count:], torch.stack(spatial).mean(0)):
            values = last_block_values(visual, tokens)[:, 1:]
            values = values.transpose(1, 2).reshape(1, -1, *clip_grid)
            values = F.interpolate(values, size=grid, mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
            branches.append(last.attn.out_proj(attention.to(values.dtype) @ values[0]))
        region_tokens = self._run(last, x, mask)[0, :count]
        expanded = F.interpolate(members.view(count, 1, *clip_grid).to(region_tokens.dtype), size=grid,
                                 mode="nearest").flatten(1)
        semantic = expanded.T @ region_tokens
        main, spatial_branch = branches
        z = visual.ln_post(main) + visual.ln_post(spatial_branch) * self.alpha + visual.ln_post(semantic) * self.beta
        return (z @ visual.proj)[None], grid

    @torch.no_grad()
    def window_logits(self, windows: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Raw cosine logits of windows with their region masks (one window at a time, so batch invariant).

        Args:
            windows: [B, 3, h, w] RGB in [0, 1] (unpadded); masks: int [B, h, w] the windows' crops of the label map.
        Returns:
            [B, Q, h, w]: windows padded to a multiple of 56 (mean colour; masks with id 10000), encoded, grid
            logits upsampled bilinearly to the padded window and cropped back.
        """
        return torch.cat([self._window_logits(w[None], m, self.match) for w, m in zip(windows.to(self.device), masks)])

    def _window_logits(self, window: torch.Tensor, regions: torch.Tensor, match: Callable) -> torch.Tensor:
        pad = symmetric_padding(*window.shape[-2:], self.pad_multiple)
        window = pad_with_colour(window, pad, self.mean)
        regions = F.pad(regions.to(self.device).long(), pad, value=PAD_REGION)
        logits = match(*self.window_embeddings(window, regions))
        self.windows_encoded += 1
        return upsample_and_crop(logits, window.shape[-2:], pad)

    # ------------------------------------------------------------------------------------ image
    def image_logits(self, image: torch.Tensor, match: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor],
                     num_queries: int, masks: Any = None, **inputs: Any) -> torch.Tensor:
        """Sliding windows with the windows' crops of the label map (resized to the image with torch ``nearest``).

        Args:
            image: [1, 3, H, W] RGB in [0, 1], resized; ``masks``: label map (or bool masks) of any size.
        Returns:
            [1, num_queries, H, W] float32 averaged raw cosine logits.
        """
        _require(masks is not None, "CorrCLIP needs region masks: pass masks=<label map> (predict() and the evaluator "
                 "take them from the mask provider)")
        height, width = image.shape[-2:]
        regions = _nearest(as_label_map(masks).to(image.device), (height, width))
        boxes = window_grid(height, width, self.slide_crop, self.slide_stride)
        per_window = (((y1, y2, x1, x2), self._window_logits(image[:, :, y1:y2, x1:x2], regions[y1:y2, x1:x2], match)[0])
                      for y1, y2, x1, x2 in boxes)
        return average_over_windows(per_window, boxes, num_queries, height, width, image.device)

    @torch.no_grad()
    def postprocess(self, logits: torch.Tensor, image: torch.Tensor, size: tuple[int, int], prob_thd: float,
                    masks: Any = None, **inputs: Any) -> torch.Tensor:
        """The core's post-processing, then the map correction by the original-size regions (when masks are given)."""
        labels = super().postprocess(logits, image, size, prob_thd)
        if masks is None:
            return labels
        return correct_by_regions(labels, as_label_map(masks, tuple(labels.shape), "masks"))


CORRCLIP_INFO = MethodInfo(
    repository="zdk258/CorrCLIP",
    commit="103bc18213e6d906e55a21b8491bc7b04cbf106b",
    files=("CorrCLIPv1/corrclip_segmentor.py", "CorrCLIPv1/open_clip/transformer.py", "CorrCLIPv1/configs/base_config.py",
           "CorrCLIPv1/configs/cfg_*.py", "CorrCLIPv1/configs/cls_*.txt"),
    mean=OFFICIAL_MEAN,
    std=OFFICIAL_STD,
    synonym_separator="; ",
    pamr_dilations=(),
    precision="fp16 (open_clip precision='fp16', DINO .half())",
    window_padding="mean colour (zero after normalisation) up to a multiple of 56, split symmetrically; the mask crop "
    "padded with id 10000; the logits are cropped back",
    differences_from_proxyclip=(
        "DINO q + k of the last block (CLS dropped) instead of ProxyCLIP's features; attention softmax(4 S) over "
        "pairs in the same (merged) region mask, or touching the unmasked region with S above its window mean",
        "CLIP runs with one region token per mask (a copy of the class token that attends to the class token and "
        "its region); three branches: main, spatial (mean of middle blocks), semantic (region tokens)",
        "map correction: each region of the original-size mask takes its most frequent class",
        "needs region masks (cached SAM2 masks or online SAM2)",
        "CLIP: MetaCLIP ViT-B/16 (metaclip_fullcc, QuickGELU); DINO ViT-B/8",
        "test short side 336 (cityscapes/ade20k 448); windows 336/112 (cityscapes 224/112)",
        "here: CLIP input normalised with open_clip's exact constants (official: the x255-rounded ones, relative "
        "difference < 1e-5), so DINO's input, official CLIP input un-normalised with the exact constants, is the "
        "window itself",
    ),
)


def _corrclip(folder: str, prob_thd: float = 0.0, short_side: int = 336, slide_crop: int = 336) -> Protocol:
    return Protocol(short_side, 2048, slide_crop, 112, 40.0, prob_thd, None, 0, options=(("mask_folder", folder),))


CORRCLIP_SPEC = MethodSpec(
    "corrclip", CorrCLIP, towers=("clip", "vfm", "masks"),
    protocols=MappingProxyType({
        "voc21": _corrclip("voc", 0.2), "context60": _corrclip("context", 0.15), "coco_object": _corrclip("coco", 0.25),
        "voc20": _corrclip("voc"), "context59": _corrclip("context"), "coco_stuff": _corrclip("coco"),
        "cityscapes": _corrclip("city", short_side=448, slide_crop=224), "ade20k": _corrclip("ade", short_side=448),
    }),
    published=MappingProxyType({"voc21": 74.8, "voc20": 88.8, "context59": 48.8, "context60": 44.2,
                                "cityscapes": 49.4, "ade20k": 26.9, "coco_stuff": 31.6, "coco_object": 43.7}),
    info=CORRCLIP_INFO,
    default_towers=MappingProxyType({"clip_weights": "metaclip_fullcc", "vfm": "vit_base_patch8_224.dino"}),
    source="zdk258/CorrCLIP@103bc18 CorrCLIPv1; published: README, ViT-B/16 with SAM2 masks (32 points per side)",
    description="patch correlations reconstructed from region masks and DINO (ICCV 2025 oral)",
)
