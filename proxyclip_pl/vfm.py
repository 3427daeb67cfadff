"""Patch features (and raw last-layer attention) of a vision foundation model (timm), one recipe class per family.

Every method takes windows as RGB in [0, 1], [B, 3, h, w], and returns maps on the VFM grid. Each recipe
reproduces the official input and positional-embedding handling and owns its normalisation:

=======  ====================================================  ===============================
kind     input                                                 positional embedding
=======  ====================================================  ===============================
dino     window, ImageNet-normalised                           DINO rule (scale factor, +0.1)
dinov2   window, ImageNet-normalised                           size rule with antialias
mae      window resized to window_size x window_size           size rule, no antialias
sam      window stretched to 1024 x 1024                       native (64 x 64 grid)
sd       window (stretched to input_size if set), 2x - 1       none: SD's UNet, DIFT's recipe
=======  ====================================================  ===============================

A new family is one :class:`VFMRecipe` subclass and one entry of :data:`VFM_RECIPES`.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .positional_embedding import interpolate_pos_embed_dino, resample_pos_embed_by_size

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAM_INPUT_SIZE = 1024


def standardize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(x - mean) / std per channel (the towers' input normalisation); x is [B, 3, h, w] in [0, 1]."""
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def _capture_last_attention_input(model: nn.Module, run: Callable[[], object]) -> torch.Tensor:
    """Run ``run()`` and return the input of the last block's attention (a temporary, removed hook)."""
    captured: list[torch.Tensor] = []
    handle = model.blocks[-1].attn.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        run()
    finally:
        handle.remove()
    return captured[0]


class VFMRecipe:
    """How one family of timm ViTs is fed and read (a plain ViT with ImageNet normalisation by default).

    Attributes:
        kind: the recipe's name (``vfm_kind``).
        mean, std: input normalisation, RGB in [0, 1] units.
    """

    kind = "vit"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    #: whether :meth:`raw_attention` exists (ProxyCLIP's ``attention="vfm"``)
    has_raw_attention = True

    def claims(self, model: nn.Module) -> bool:
        """Whether ``model``'s own configuration says it was released with this recipe."""
        return False

    def input_size(self, window_size: int) -> int | None:
        """Square side the windows are resized to (``None``: fed at their size)."""
        return None

    def prepare(self, windows: torch.Tensor, window_size: int) -> torch.Tensor:
        """[B, 3, h, w] in [0, 1] -> the model's input: normalised, resized (bilinear) where the recipe says."""
        x = standardize(windows, self.mean, self.std)
        target = self.input_size(window_size)
        if target is not None and tuple(x.shape[-2:]) != (target, target):
            x = F.interpolate(x, size=(target, target), mode="bilinear", align_corners=False)
        return x

    def check(self, model: nn.Module) -> None:
        """``ValueError`` when ``model`` cannot serve with this recipe."""
        for attr in ("patch_embed", "blocks", "norm", "pos_embed"):
            if getattr(model, attr, None) is None:
                raise ValueError(f"vfm_kind={self.kind!r} needs a timm VisionTransformer; the model has no '{attr}'")

    def pos_embed(self, model: nn.Module, grid: tuple[int, int]) -> torch.Tensor:
        """The positional embedding resized to ``grid`` (prefix entries kept where the table has them)."""
        raise NotImplementedError

    def tokens(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """timm ViT forward by hand (so the positional embedding follows the recipe): [B, T, C] after ``norm``."""
        x = model.patch_embed.proj(x.to(model.patch_embed.proj.weight.dtype))
        grid = (x.shape[-2], x.shape[-1])
        x = model.patch_embed.norm(x.flatten(2).transpose(1, 2))
        pos = self.pos_embed(model, grid).to(x.dtype)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (model.cls_token, getattr(model, "reg_token", None))
                  if t is not None]
        if model.no_embed_class:
            x = torch.cat(prefix + [x + pos], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1) + pos
        x = model.norm_pre(model.patch_drop(model.pos_drop(x)))
        x = model.norm(model.blocks(x))
        return x, grid

    def features(self, model: nn.Module, windows: torch.Tensor, window_size: int) -> torch.Tensor:
        """[B, C, H, W]: final-normed last-layer patch tokens (prefix tokens dropped), rows from the height."""
        tokens, (gh, gw) = self.tokens(model, self.prepare(windows, window_size))
        patches = tokens[:, model.num_prefix_tokens:]
        return patches.transpose(1, 2).reshape(patches.shape[0], -1, gh, gw)

    def raw_attention(self, model: nn.Module, windows: torch.Tensor,
                      window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """[B, N, N] last-layer patch-to-patch attention averaged over heads (rows sum to 1) and the grid (H, W)."""
        x = self.prepare(windows, window_size)
        attn = model.blocks[-1].attn
        grid: list[tuple[int, int]] = []
        inp = _capture_last_attention_input(model, lambda: grid.append(self.tokens(model, x)[1]))
        b, t, _ = inp.shape
        qkv = attn.qkv(inp).reshape(b, t, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, _ = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        p = model.num_prefix_tokens
        scores = (q[:, :, p:] * attn.scale) @ k[:, :, p:].transpose(-2, -1)
        return scores.float().softmax(-1).mean(1), grid[0]


def _pos_prefix(model: nn.Module) -> int:
    return 0 if model.no_embed_class else model.num_prefix_tokens


class DinoRecipe(VFMRecipe):
    """DINO v1 (and DINOv2 without registers): the scale-factor rule with offset 0.1, no antialias. The default
    for any other plain ViT."""

    kind = "dino"

    def claims(self, model: nn.Module) -> bool:
        return True

    def check(self, model: nn.Module) -> None:
        super().check(model)
        if model.num_prefix_tokens != 1 or model.no_embed_class:
            raise ValueError(f"vfm_kind={self.kind!r} needs a ViT with one class token whose pos_embed covers it; "
                             "use vfm_kind='dinov2' for register models")

    def pos_embed(self, model: nn.Module, grid: tuple[int, int]) -> torch.Tensor:
        return interpolate_pos_embed_dino(model.pos_embed, *grid, num_prefix_tokens=_pos_prefix(model))


class DinoV2Recipe(VFMRecipe):
    """DINOv2 with registers (or any pos_embed without the class entry): the size rule with antialias."""

    kind = "dinov2"

    def claims(self, model: nn.Module) -> bool:
        return getattr(model, "num_reg_tokens", 0) > 0 or getattr(model, "no_embed_class", False)

    def pos_embed(self, model: nn.Module, grid: tuple[int, int]) -> torch.Tensor:
        return resample_pos_embed_by_size(model.pos_embed, *grid, num_prefix_tokens=_pos_prefix(model), antialias=True)


class MAERecipe(DinoRecipe):
    """MAE: the window resized to ``window_size`` squared, the size rule without antialias."""

    kind = "mae"

    def claims(self, model: nn.Module) -> bool:
        return (getattr(model, "pretrained_cfg", None) or {}).get("tag") == "mae"

    def input_size(self, window_size: int) -> int | None:
        return window_size

    def pos_embed(self, model: nn.Module, grid: tuple[int, int]) -> torch.Tensor:
        return resample_pos_embed_by_size(model.pos_embed, *grid, num_prefix_tokens=_pos_prefix(model),
                                          antialias=False)


class SAMRecipe(VFMRecipe):
    """SAM's image encoder: the window stretched to 1024 squared, its native grid and the 256-d neck map."""

    kind = "sam"

    def claims(self, model: nn.Module) -> bool:
        from timm.models.vision_transformer_sam import VisionTransformerSAM

        return isinstance(model, VisionTransformerSAM)

    def input_size(self, window_size: int) -> int | None:
        return SAM_INPUT_SIZE

    def check(self, model: nn.Module) -> None:
        if not hasattr(model, "neck"):
            raise ValueError("vfm_kind='sam' needs a timm samvit model (with a neck)")

    def features(self, model: nn.Module, windows: torch.Tensor, window_size: int) -> torch.Tensor:
        """The [B, 256, 64, 64] neck map."""
        x = self.prepare(windows, window_size)
        return model.forward_features(x.to(model.patch_embed.proj.weight.dtype))

    def raw_attention(self, model: nn.Module, windows: torch.Tensor,
                      window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
        from .sam_affinity import attention_logits

        x = self.prepare(windows, window_size)
        attn = model.blocks[-1].attn
        inp = _capture_last_attention_input(model, lambda: model.forward_features(x))
        b, h, w, _ = inp.shape
        if (h, w) != tuple(model.patch_embed.grid_size):
            raise ValueError("raw SAM attention needs a global-attention last block")
        n = h * w
        scores, _ = attention_logits(attn, inp.reshape(b, n, -1), (h, w))
        return scores.float().softmax(-1).view(b, attn.num_heads, n, n).mean(1), (h, w)


class SDRecipe(VFMRecipe):
    """Stable Diffusion's UNet in DIFT's recipe (:class:`proxyclip_pl.sd_features.StableDiffusionVFM`, built by
    ``build_vfm('sd-2-1', ...)``): the window stretched to the model's ``input_size`` when set, ``2 x - 1``, a
    VAE latent noised at ``t`` with fixed draws, the output of one up block, the mean over the ensemble. The model
    owns its settings; ``window_size`` is not used. A UNet has no raw attention to read."""

    kind = "sd"
    has_raw_attention = False

    def prepare(self, windows: torch.Tensor, window_size: int) -> torch.Tensor:
        """The windows as they are: the model does its own stretch and ``2 x - 1`` (applying them here too would
        apply them twice)."""
        return windows

    def claims(self, model: nn.Module) -> bool:
        from .sd_features import StableDiffusionVFM  # torch only: no diffusers import

        return isinstance(model, StableDiffusionVFM)

    def check(self, model: nn.Module) -> None:
        if not self.claims(model):
            raise ValueError("vfm_kind='sd' needs a Stable Diffusion VFM (proxyclip_pl.build_vfm('sd-2-1', ...) or "
                             f"an SD spec file), got a {type(model).__name__}")

    def features(self, model: nn.Module, windows: torch.Tensor, window_size: int) -> torch.Tensor:
        """[B, C, H, W] float32 on the UNet's grid (1/16 of the stretched window for ``up_ft_index`` 1)."""
        return model(windows)

    def raw_attention(self, model: nn.Module, windows: torch.Tensor,
                      window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
        raise ValueError("vfm_kind='sd' has no raw attention (a UNet has no last-layer self-attention among patch "
                         "tokens): use attention='proxy'")


#: kind -> recipe, in the order a model's configuration is matched (:func:`recipe_of`; DINO last: the default).
VFM_RECIPES: Mapping[str, VFMRecipe] = MappingProxyType(
    {r.kind: r for r in (SAMRecipe(), DinoV2Recipe(), MAERecipe(), SDRecipe(), DinoRecipe())})
VFM_KINDS = tuple(VFM_RECIPES)


def vfm_recipe(kind: str) -> VFMRecipe:
    """The recipe of ``kind`` (``ValueError`` naming the known kinds)."""
    if kind not in VFM_RECIPES:
        raise ValueError(f"unknown vfm_kind {kind!r}; expected one of {', '.join(VFM_KINDS)}")
    return VFM_RECIPES[kind]


def recipe_of(model: nn.Module) -> VFMRecipe:
    """The recipe a timm model was released with, read from its own configuration (class, register tokens,
    pretrained tag), not from its name."""
    return next(recipe for recipe in VFM_RECIPES.values() if recipe.claims(model))


def vfm_input(windows: torch.Tensor, kind: str, window_size: int) -> torch.Tensor:
    """The model input of ``kind`` (:meth:`VFMRecipe.prepare`)."""
    return vfm_recipe(kind).prepare(windows, window_size)


def check_vfm(model: nn.Module, kind: str) -> None:
    """Raise ``ValueError`` when ``model`` cannot serve as a VFM of the given kind."""
    vfm_recipe(kind).check(model)


def vfm_features(model: nn.Module, kind: str, windows: torch.Tensor, window_size: int) -> torch.Tensor:
    """VFM patch features (:meth:`VFMRecipe.features`).

    Args:
        windows: [B, 3, h, w] RGB in [0, 1].
        window_size: the window side (``slide_crop``); MAE inputs are resized to it.
    Returns:
        [B, C, H, W]; SAM: the [B, 256, 64, 64] neck map; SD: float32 (``window_size`` unused).
    """
    return vfm_recipe(kind).features(model, windows, window_size)


def vfm_raw_attention(model: nn.Module, kind: str, windows: torch.Tensor,
                      window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """The VFM's own last-layer self-attention among patch tokens, averaged over heads.

    Softmax of ``scale * q k^T`` (plus SAM's relative-position bias) over the patch keys only, i.e. the
    patch-to-patch block of the attention renormalised per row; prefix tokens (CLS, registers) dropped.

    Returns:
        [B, N, N] attention (rows sum to 1) and the VFM grid (H, W), N = H*W in row-major order.
    """
    return vfm_recipe(kind).raw_attention(model, windows, window_size)
