"""The two towers from names (open_clip / timm style) and weight sources.

Weights are given as one string:

* a pretrained tag: CLIP ``openai``, ``laion2b_s32b_b79k``, ...; VFM ``pretrained`` (timm's weights for
  the tag in the model name, e.g. ``vit_base_patch8_224.dino``). Downloaded on a connected machine into
  the Hugging Face / open_clip cache; ``HF_HUB_OFFLINE=1`` uses the cache only.
* a path to a local checkpoint file (:mod:`proxyclip_pl.weights`).
* ``random``: seeded random initialisation (identical on every process for the same seed).

Model names may also be JSON files: an open_clip model config for CLIP, or
``{"model_name": timm_name, "kind": ..., "kwargs": {...}}`` for a VFM (e.g. a tiny test model).
Stable Diffusion VFMs (``sd-2-1``, ``{"kind": "sd", ...}``): :mod:`proxyclip_pl.sd_vfm`.
"""
from __future__ import annotations

import difflib
import json
import os
import pickle
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .defaults import DEFAULT_CLIP, DEFAULT_SAM, DEFAULT_VFM, PRETRAINED, RANDOM
from .weights import (OPENAI_CHECKPOINT_ENTRIES, WeightsNotFoundError, download_reason, hub_cache, hub_unreachable,
                      is_openai_checkpoint, is_weights_path, quiet_root_log, read_checkpoint, refused_pickle, seeded)


class QuickGeluWarning(UserWarning):
    """CLIP weights of unknown provenance are built with plain GELU; OpenAI-trained weights need QuickGELU."""


@dataclass(frozen=True)
class ClipPreset:
    """A paper CLIP: open_clip model name and its pretrained tag."""

    model_name: str
    pretrained: str
    patch_size: int


@dataclass(frozen=True)
class VfmPreset:
    """A paper VFM: timm model name and the ProxyCLIP feature recipe (``kind``)."""

    model_name: str
    kind: str
    timm_kwargs: dict[str, Any] = field(default_factory=dict)


CLIP_MODELS: dict[str, ClipPreset] = {
    "ViT-B-16-quickgelu": ClipPreset("ViT-B-16-quickgelu", "openai", 16),
    "ViT-L-14-quickgelu": ClipPreset("ViT-L-14-quickgelu", "openai", 14),
    "ViT-H-14": ClipPreset("ViT-H-14", "laion2b_s32b_b79k", 14),
}

VFM_MODELS: dict[str, VfmPreset] = {
    "vit_small_patch8_224.dino": VfmPreset("vit_small_patch8_224.dino", "dino"),
    "vit_base_patch8_224.dino": VfmPreset("vit_base_patch8_224.dino", "dino"),
    "vit_small_patch16_224.dino": VfmPreset("vit_small_patch16_224.dino", "dino"),
    "vit_base_patch16_224.dino": VfmPreset("vit_base_patch16_224.dino", "dino"),
    "vit_base_patch14_reg4_dinov2.lvd142m": VfmPreset("vit_base_patch14_reg4_dinov2.lvd142m", "dinov2"),
    # DINOv2 without registers (hub dinov2_vits14 / _vitb14 / _vitl14): the DINO rule (offset 0.1, no antialias).
    "vit_small_patch14_dinov2.lvd142m": VfmPreset("vit_small_patch14_dinov2.lvd142m", "dino"),
    "vit_base_patch14_dinov2.lvd142m": VfmPreset("vit_base_patch14_dinov2.lvd142m", "dino"),
    "vit_large_patch14_dinov2.lvd142m": VfmPreset("vit_large_patch14_dinov2.lvd142m", "dino"),
    "samvit_base_patch16.sa1b": VfmPreset("samvit_base_patch16.sa1b", "sam"),
    "vit_base_patch16_224.mae": VfmPreset("vit_base_patch16_224.mae", "mae"),
}

#: torch.hub names of the official VFMs -> timm names (for the error message of an unknown name).
HUB_NAMES = {
    "dino_vits8": "vit_small_patch8_224.dino",
    "dino_vitb8": "vit_base_patch8_224.dino",
    "dino_vits16": "vit_small_patch16_224.dino",
    "dino_vitb16": "vit_base_patch16_224.dino",
    "dinov2_vits14": "vit_small_patch14_dinov2.lvd142m",
    "dinov2_vitb14": "vit_base_patch14_dinov2.lvd142m",
    "dinov2_vitl14": "vit_large_patch14_dinov2.lvd142m",
    "dinov2_vitb14_reg": "vit_base_patch14_reg4_dinov2.lvd142m",
}



def vfm_kind_of(model: nn.Module) -> str:
    """ProxyCLIP feature recipe (positional-embedding rule) read from a timm model's own configuration.

    * a SAM image encoder -> ``sam``;
    * register tokens (``num_reg_tokens > 0``) or a ``pos_embed`` without the class entry (``no_embed_class``)
      -> ``dinov2``: the size rule with antialias, as the DINOv2 register hub models resample
      (``interpolate_offset=0``, antialias) and as timm resamples such models;
    * pretrained tag ``mae`` -> ``mae`` (size rule without antialias, applied once to the checkpoint);
    * every other ViT -> ``dino``: offset 0.1, no antialias. This is DINO v1's rule, and also that of the
      DINOv2 models *without* registers (hub ``dinov2_vitb14``: ``interpolate_offset=0.1``, no antialias).

    ``dynamic_img_size`` is not consulted: it is a timm runtime option (size rule + antialias) that a user
    may switch on for any ViT, not the rule the weights were released with (docs/method_notes.md,
    'VFM features').
    """
    from .vfm import recipe_of  # each recipe class claims its models (proxyclip_pl.vfm.VFM_RECIPES, in order)

    return recipe_of(model).kind


def vfm_kind_for(model_name: str) -> str:
    """ProxyCLIP feature recipe of a timm model name: the preset's, else read from the model's
    configuration (:func:`vfm_kind_of` on the architecture built on the meta device: no memory, no weights)."""
    if model_name in VFM_MODELS:
        return VFM_MODELS[model_name].kind
    import timm

    _check_timm_name(model_name)
    with torch.device("meta"):
        return vfm_kind_of(timm.create_model(model_name, pretrained=False))


def _close_matches(name: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'a', 'b'?)`` or an empty string."""
    matches = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(m) for m in matches)}?)" if matches else ""


def _check_timm_name(name: str) -> None:
    """``ValueError`` for an unknown timm architecture or pretrained tag, with examples."""
    import timm

    if not timm.is_model(name):
        hint = (f" (a torch.hub name; in timm: {HUB_NAMES[name]!r})" if name in HUB_NAMES
                else _close_matches(name, timm.list_models(pretrained=True)))
        raise ValueError(
            f"unknown timm VFM {name!r}{hint}; "
            f"e.g. {', '.join(VFM_MODELS)} (all names: timm.list_models(pretrained=True)), or a VFM spec .json"
        )
    try:
        timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # timm: "Invalid pretrained tag"
        arch = name.split(".")[0]
        tags = timm.list_pretrained(f"{arch}.*")
        raise ValueError(f"unknown pretrained tag in timm VFM {name!r}; known: {', '.join(tags) or 'none'}") from None


def clip_needs_quick_gelu(model_name: str, weights: str, checkpoint: Mapping[str, Any] | None = None) -> bool | None:
    """Whether CLIP ``weights`` were trained with QuickGELU (OpenAI, MetaCLIP, DFN, ...).

    Args:
        model_name: open_clip model name.
        weights: pretrained tag, checkpoint path or ``random``.
        checkpoint: for a path, its top-level entries (:func:`read_checkpoint`), if readable.
    Returns:
        For a tag: the ``quick_gelu`` field of open_clip's pretrained config. For a local file: ``True``
        when it has OpenAI's layout (:func:`is_openai_checkpoint`), else ``None`` (unknown). ``random``:
        ``False`` (the model config decides).
    """
    if weights == RANDOM:
        return False
    if is_weights_path(weights):
        return True if checkpoint is not None and is_openai_checkpoint(checkpoint) else None
    import open_clip

    return bool(open_clip.get_pretrained_cfg(model_name, weights).get("quick_gelu", False))


def _load_openai_checkpoint(model: nn.Module, checkpoint: Mapping[str, Any], path: Path, model_name: str) -> None:
    """Load an OpenAI-layout state dict into ``model`` (strict): its scalar entries dropped, the positional
    embedding resized to the model's image size by open_clip's checkpoint rule (as open_clip's loader does)."""
    from open_clip.model import resize_pos_embed

    # Non-persistent buffers (open_clip's attn_mask) are rebuilt by the model; TorchScript archives keep them.
    recomputed = {k for k, _ in model.named_buffers()} - set(model.state_dict())
    state_dict = {k: v for k, v in checkpoint.items() if k not in OPENAI_CHECKPOINT_ENTRIES and k not in recomputed}
    resize_pos_embed(state_dict, model)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"cannot load CLIP checkpoint {path} into {model_name}: {exc}") from exc


def resolve_clip_weights(name: str, weights: str | None) -> str:
    """``weights`` if given; else the paper's tag of a preset, open_clip's first tag, or ``random``
    for a model-config JSON (it has no published weights)."""
    if weights:
        return weights
    if name.endswith(".json"):
        return RANDOM
    if name in CLIP_MODELS:
        return CLIP_MODELS[name].pretrained
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(name)
    return tags[0] if tags else RANDOM


def _resolve_clip_name(name: str) -> str:
    import open_clip

    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"CLIP model config not found: {path}")
        try:
            json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"CLIP model config {path} is not valid JSON: {exc}") from exc
        open_clip.add_model_config(path)
        return path.stem
    if name not in open_clip.list_models():
        raise ValueError(
            f"unknown CLIP model {name!r}{_close_matches(name, open_clip.list_models())}: use an open_clip name "
            f"(e.g. {', '.join(CLIP_MODELS)}; all names: open_clip.list_models()) or a path to an open_clip "
            "model-config .json"
        )
    return name


def build_clip(
    name: str = DEFAULT_CLIP, weights: str | None = None, seed: int = 0, cache_dir: str | None = None
) -> tuple[nn.Module, Callable[[list[str]], torch.Tensor]]:
    """An open_clip CLIP model (eval mode) and its tokenizer.

    Args:
        name: open_clip model name or path to a model-config JSON.
        weights: pretrained tag, checkpoint path or ``random``; default: the preset's tag.
        seed: seed of the random initialisation (used by ``random``).
        cache_dir: download cache (default: the Hugging Face cache).
    """
    import open_clip

    model_name = _resolve_clip_name(name)
    weights = resolve_clip_weights(name, weights)
    tokenizer = open_clip.get_tokenizer(model_name)
    if weights == RANDOM:
        with quiet_root_log("No pretrained weights loaded"):  # open_clip's notice: random weights were asked for
            model = seeded(seed, lambda: open_clip.create_model(model_name, pretrained=None))
    elif is_weights_path(weights):
        model = _clip_from_file(model_name, Path(weights))
    else:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if weights not in tags:
            raise ValueError(f"unknown pretrained tag {weights!r} for CLIP {model_name}; known: {', '.join(tags) or 'none'}")
        hub_unreachable()  # offline: fail at once instead of retrying
        try:
            # QuickGELU from the tag's pretrained config: open_clip itself only warns on a mismatch, e.g.
            # ViT-B-16 + openai / metaclip_400m / dfn2b would silently run GELU.
            with quiet_root_log("Failed to download weights"):
                model = open_clip.create_model(
                    model_name,
                    pretrained=weights,
                    force_quick_gelu=bool(clip_needs_quick_gelu(model_name, weights)),
                    cache_dir=cache_dir,
                )
        except Exception as exc:
            cfg = open_clip.get_pretrained_cfg(model_name, weights)
            repo = (cfg.get("hf_hub") or "").strip("/")
            where = hub_cache(cache_dir)
            if repo:
                how = f"`hf download {repo}" + (f" --cache-dir {cache_dir}`" if cache_dir else "`")
            else:
                how = f"download {cfg.get('url') or '?'} into {cache_dir or '~/.cache/clip'}"
            raise WeightsNotFoundError(
                f"CLIP weights {model_name}/{weights} are not available: {download_reason(exc, where)}. "
                f"On a connected machine run {how} (Hugging Face cache: {where}), or pass a local checkpoint "
                "file as weights"
            ) from exc
    return model.eval(), tokenizer


def _clip_from_file(model_name: str, path: Path) -> nn.Module:
    """open_clip ``model_name`` with the weights of a local checkpoint; QuickGELU for OpenAI's checkpoints."""
    import open_clip

    if not path.is_file():
        raise WeightsNotFoundError(f"CLIP checkpoint not found: {path}")
    checkpoint = read_checkpoint(path, "CLIP")
    quick_gelu = clip_needs_quick_gelu(model_name, str(path), checkpoint)
    config_quick_gelu = bool((open_clip.get_model_config(model_name) or {}).get("quick_gelu", False))
    if quick_gelu is None and not config_quick_gelu:
        # open_clip checks QuickGELU for tags only; a GELU mismatch silently changes every number.
        fix = (f"the name '{model_name}-quickgelu'" if f"{model_name}-quickgelu" in open_clip.list_models()
               else 'a model config with "quick_gelu": true')
        warnings.warn(
            f"CLIP checkpoint {path}: its provenance cannot be told from the file (no OpenAI archive or "
            f"state-dict layout), and {model_name} builds plain GELU. OpenAI-trained weights need QuickGELU: "
            f"if these are OpenAI weights, use {fix}",
            QuickGeluWarning,
            stacklevel=3,
        )
    if checkpoint is not None and is_openai_checkpoint(checkpoint):
        # open_clip's file loader rejects the scalar OpenAI entries of a plain state dict (strict loading)
        # and needs weights_only=False for a TorchScript archive; the entries are already read here.
        with quiet_root_log("No pretrained weights loaded"):
            model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=True)
        _load_openai_checkpoint(model, checkpoint, path, model_name)
        return model
    pickled = checkpoint is None  # Python objects that tensors-only loading refuses: open_clip may refuse too
    del checkpoint  # open_clip reads the file itself (format conversions, pos-embed resize)
    try:
        return open_clip.create_model(
            model_name, pretrained=str(path), load_weights=True, force_quick_gelu=bool(quick_gelu)
        )
    except (RuntimeError, KeyError, ValueError, pickle.UnpicklingError) as exc:
        refused = refused_pickle("CLIP", path, exc) if pickled else None
        raise refused or ValueError(f"cannot load CLIP checkpoint {path} into {model_name}: {exc}") from exc


def _load_vfm_spec(name: str) -> tuple[str, str | None, dict[str, Any]]:
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"VFM spec file not found: {path}")
    try:
        spec = json.loads(path.read_text())
        return spec["model_name"], spec.get("kind"), dict(spec.get("kwargs", {}))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"VFM spec {path} must be JSON with 'model_name' (and optional 'kind', 'kwargs')") from exc


def check_clip_name(name: str) -> None:
    """``ValueError`` (or ``FileNotFoundError`` for a missing config) unless ``name`` is an open_clip model name or
    a model-config JSON; cheap: nothing is built."""
    _resolve_clip_name(name)


def check_vfm_name(name: str) -> None:
    """``ValueError`` (or ``FileNotFoundError`` for a missing spec) unless ``name`` is a known timm VFM or a
    valid VFM spec file; cheap: nothing is built."""
    from .sd_vfm import check_sd_name, is_sd_name  # Stable Diffusion (extra [sd]): presets and {"kind": "sd"} specs

    if is_sd_name(name):
        return check_sd_name(name)
    _check_timm_name(_load_vfm_spec(name)[0] if name.endswith(".json") else name)


def build_vfm(name: str = DEFAULT_VFM, weights: str = PRETRAINED, seed: int = 0, **timm_kwargs: Any) -> tuple[nn.Module, str]:
    """A frozen timm VFM (eval mode) and its ProxyCLIP kind.

    Args:
        name: timm model name (with pretrained tag) or a JSON spec file; Stable Diffusion: ``sd-2-1``,
            ``sd-2-1-base`` or a ``{"kind": "sd", ...}`` spec (:func:`proxyclip_pl.sd_vfm.build_sd_vfm`).
        weights: ``pretrained``, a checkpoint path, or ``random`` (SD: a local diffusers folder for a path).
        timm_kwargs: overrides for ``timm.create_model`` (e.g. a tiny ``embed_dim``/``depth`` for tests); SD:
            ``t``, ``up_ft_index``, ``ensemble``, ``input_size``.
    """
    from .sd_vfm import SD_KIND, build_sd_vfm, is_sd_name

    if is_sd_name(name):
        return build_sd_vfm(name, weights, seed=seed, **timm_kwargs), SD_KIND
    import timm

    kind = None
    if name.endswith(".json"):
        name, kind, spec_kwargs = _load_vfm_spec(name)
        timm_kwargs = {**spec_kwargs, **timm_kwargs}
    _check_timm_name(name)
    kwargs = {"num_classes": 0, **timm_kwargs}
    if weights == RANDOM:
        model = seeded(seed, lambda: timm.create_model(name, pretrained=False, **kwargs))
    elif weights == PRETRAINED:
        hub_unreachable()  # offline: fail at once instead of retrying
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as exc:
            cfg = timm.models.get_pretrained_cfg(name)
            if cfg is not None and cfg.hf_hub_id:
                where = hub_cache(None)
                how = f"run `hf download {cfg.hf_hub_id}` (Hugging Face cache: {where})"
            else:
                where = os.path.join(torch.hub.get_dir(), "checkpoints")
                how = f"download {(cfg.url if cfg else None) or name} into {where}"
            raise WeightsNotFoundError(
                f"VFM weights for {name} are not available: {download_reason(exc, where)}. On a connected "
                f"machine {how}, or pass a local checkpoint file as weights"
            ) from exc
    elif is_weights_path(weights):
        path = Path(weights)
        if not path.is_file():
            raise WeightsNotFoundError(f"VFM checkpoint not found: {path}")
        # A clear error for a truncated file or one that is no checkpoint, before timm's own loader.
        pickled = read_checkpoint(path, "VFM") is None  # Python objects: timm allows a few, refuses the rest
        try:
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
        except Exception as exc:
            refused = refused_pickle("VFM", path, exc) if pickled else None
            raise refused or ValueError(f"cannot load VFM checkpoint {path} into {name}: {exc}") from exc
    else:
        raise ValueError(f"VFM weights must be '{PRETRAINED}', '{RANDOM}' or a checkpoint path, got {weights!r}")
    # The kind comes from the model's own configuration (registers, pretrained tag, class), not its name.
    return model.eval().requires_grad_(False), kind or vfm_kind_of(model)




def build_sam(name: str = DEFAULT_SAM, weights: str = PRETRAINED, seed: int = 0, **timm_kwargs: Any) -> nn.Module:
    """SAM's image encoder as a frozen timm ``samvit`` with SAM's own LayerNorm eps (1e-6; timm's default is 1e-5),
    as Trident uses it (:mod:`proxyclip_pl.sam_affinity`). Arguments as :func:`build_vfm`."""
    try:
        model, kind = build_vfm(name, weights, seed=seed, **timm_kwargs)
    except WeightsNotFoundError as exc:  # the user typed --sam-weights, not --vfm-weights
        raise WeightsNotFoundError(f"--sam-weights: {str(exc).replace('VFM ', 'SAM ', 1)}") from None
    if kind != "sam":
        raise ValueError(f"--sam {name}: not a SAM image encoder (timm samvit_*), got a {kind!r} model")
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.eps = 1e-6
    return model
