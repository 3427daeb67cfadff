"""Build CLIP, VFM and ProxyCLIP from names (open_clip / timm style) and weight sources.

Weights are given as one string:

* a pretrained tag: CLIP ``openai``, ``laion2b_s32b_b79k``, ...; VFM ``pretrained`` (timm's weights for
  the tag in the model name, e.g. ``vit_base_patch8_224.dino``). Downloaded on a connected machine into
  the Hugging Face / open_clip cache; ``HF_HUB_OFFLINE=1`` uses the cache only.
* a path to a local checkpoint file.
* ``random``: seeded random initialisation (identical on every process for the same seed).

Model names may also be JSON files: an open_clip model config for CLIP, or
``{"model_name": timm_name, "kind": ..., "kwargs": {...}}`` for a VFM (e.g. a tiny test model).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

RANDOM = "random"
PRETRAINED = "pretrained"


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are neither cached nor downloadable; the message says what to fetch and where."""


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
    "samvit_base_patch16.sa1b": VfmPreset("samvit_base_patch16.sa1b", "sam"),
    "vit_base_patch16_224.mae": VfmPreset("vit_base_patch16_224.mae", "mae"),
}

DEFAULT_CLIP = "ViT-B-16-quickgelu"
DEFAULT_VFM = "vit_base_patch8_224.dino"


def vfm_kind_for(model_name: str) -> str:
    """ProxyCLIP feature recipe of a timm model name (generic ViTs behave as DINO v1)."""
    if model_name in VFM_MODELS:
        return VFM_MODELS[model_name].kind
    base = model_name.split(".")[0]
    if "dinov2" in base:
        return "dinov2"
    if base.startswith("samvit"):
        return "sam"
    if model_name.endswith(".mae"):
        return "mae"
    return "dino"


def _is_path(weights: str) -> bool:
    return os.sep in weights or weights.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def _seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Build under a fixed seed without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


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
            f"unknown CLIP model {name!r}: use an open_clip name (e.g. {', '.join(CLIP_MODELS)}) "
            "or a path to an open_clip model-config .json"
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
        model = _seeded(seed, lambda: open_clip.create_model(model_name, pretrained=None))
    elif _is_path(weights):
        if not Path(weights).is_file():
            raise WeightsNotFoundError(f"CLIP checkpoint not found: {weights}")
        model = open_clip.create_model(model_name, pretrained=weights, load_weights=True)
    else:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if weights not in tags:
            raise ValueError(f"unknown pretrained tag {weights!r} for CLIP {model_name}; known: {', '.join(tags) or 'none'}")
        try:
            # open_clip would build OpenAI weights with GELU and only warn; they need QuickGELU.
            model = open_clip.create_model(
                model_name, pretrained=weights, force_quick_gelu=weights == "openai", cache_dir=cache_dir
            )
        except Exception as exc:
            cfg = open_clip.get_pretrained_cfg(model_name, weights)
            source = cfg.get("hf_hub") or cfg.get("url") or "?"
            where = cache_dir or os.environ.get("HF_HUB_CACHE") or "~/.cache/huggingface/hub"
            raise WeightsNotFoundError(
                f"CLIP weights {model_name}/{weights} are not available offline ({type(exc).__name__}). Download "
                f"{source} on a connected machine into {where}, or pass a local checkpoint path as weights"
            ) from exc
    return model.eval(), tokenizer


def _load_vfm_spec(name: str) -> tuple[str, str | None, dict[str, Any]]:
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"VFM spec file not found: {path}")
    try:
        spec = json.loads(path.read_text())
        return spec["model_name"], spec.get("kind"), dict(spec.get("kwargs", {}))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"VFM spec {path} must be JSON with 'model_name' (and optional 'kind', 'kwargs')") from exc


def build_vfm(name: str = DEFAULT_VFM, weights: str = PRETRAINED, seed: int = 0, **timm_kwargs: Any) -> tuple[nn.Module, str]:
    """A frozen timm VFM (eval mode) and its ProxyCLIP kind.

    Args:
        name: timm model name (with pretrained tag) or a JSON spec file.
        weights: ``pretrained``, a checkpoint path, or ``random``.
        timm_kwargs: overrides for ``timm.create_model`` (e.g. a tiny ``embed_dim``/``depth`` for tests).
    """
    import timm

    kind = None
    if name.endswith(".json"):
        name, kind, spec_kwargs = _load_vfm_spec(name)
        timm_kwargs = {**spec_kwargs, **timm_kwargs}
    if not timm.is_model(name):
        raise ValueError(f"unknown timm VFM {name!r}; e.g. {', '.join(VFM_MODELS)}")
    kind = kind or vfm_kind_for(name)
    kwargs = {"num_classes": 0, **timm_kwargs}
    if weights == RANDOM:
        model = _seeded(seed, lambda: timm.create_model(name, pretrained=False, **kwargs))
    elif weights == PRETRAINED or _is_path(weights):
        overlay = None
        if weights != PRETRAINED:
            if not Path(weights).is_file():
                raise WeightsNotFoundError(f"VFM checkpoint not found: {weights}")
            overlay = {"file": str(weights)}
        try:
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        except Exception as exc:
            if overlay is not None:
                raise ValueError(f"cannot load VFM checkpoint {weights} into {name}: {exc}") from exc
            cfg = timm.models.get_pretrained_cfg(name)
            source = (cfg.hf_hub_id if cfg else None) or (cfg.url if cfg else None) or name
            raise WeightsNotFoundError(
                f"VFM weights for {name} are not available offline ({type(exc).__name__}). Download {source} on a "
                "connected machine into the Hugging Face cache (~/.cache/huggingface/hub, or $HF_HUB_CACHE), or pass "
                "a local checkpoint path as weights"
            ) from exc
    else:
        raise ValueError(f"VFM weights must be '{PRETRAINED}', '{RANDOM}' or a checkpoint path, got {weights!r}")
    return model.eval().requires_grad_(False), kind


def build_proxyclip(
    vocabulary: Sequence[Sequence[str]],
    clip: str = DEFAULT_CLIP,
    clip_weights: str | None = None,
    vfm: str | None = DEFAULT_VFM,
    vfm_weights: str = PRETRAINED,
    seed: int = 0,
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
    text_cache_dir: str | Path | None | bool = None,
    keep_text_tower: bool = False,
    **proxyclip_kwargs: Any,
):
    """Build :class:`~proxyclip_pl.ProxyCLIP` from names (``vfm=None`` for the no-VFM baselines).

    Args:
        text_cache_dir: where text embeddings are cached (default: :func:`text_cache.default_cache_dir`);
            ``False`` disables the cache.
        keep_text_tower: the text tower is only needed for the text embeddings; it is freed after they
            are computed (ViT-B/16: 252 MB) unless this is set.
    """
    from .model import ProxyCLIP
    from .text_cache import cached_text_embeddings, weights_identity
    from .vocabulary import encode_text_embeddings, flatten_vocabulary

    clip_model, tokenizer = build_clip(clip, clip_weights, seed=seed, cache_dir=cache_dir)
    clip_model.to(device)
    if "text_embeddings" not in proxyclip_kwargs:
        queries = flatten_vocabulary(vocabulary)[0]
        if text_cache_dir is False:
            text_embeddings = encode_text_embeddings(clip_model, tokenizer, queries)
        else:
            weights = resolve_clip_weights(clip, clip_weights)
            name = clip if not clip.endswith(".json") else f"{Path(clip).resolve()}:{Path(clip).read_text()}"
            text_embeddings = cached_text_embeddings(
                clip_model, tokenizer, queries, name, weights_identity(weights, seed), text_cache_dir or None
            )
        proxyclip_kwargs["text_embeddings"] = text_embeddings
    if not keep_text_tower:
        # Before the VFM is built, so that its weights reuse the freed memory (lower peak RSS).
        release_text_tower(clip_model)
    vfm_model, kind = (None, "dino") if vfm is None else build_vfm(vfm, vfm_weights, seed=seed)
    if vfm_model is not None:
        vfm_model.to(device)
    proxyclip_kwargs.setdefault("vfm_kind", kind)
    model = ProxyCLIP(clip_model, vfm_model, vocabulary, tokenizer=tokenizer, **proxyclip_kwargs)
    return model.to(device)


def release_text_tower(clip_model: nn.Module) -> None:
    """Free an open_clip CLIP's text tower in place (``encode_text`` no longer works afterwards)."""
    for name in ("transformer", "token_embedding", "ln_final", "text_projection", "positional_embedding", "attn_mask"):
        if hasattr(clip_model, name):
            setattr(clip_model, name, None)
