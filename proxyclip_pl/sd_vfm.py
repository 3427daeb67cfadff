"""Stable Diffusion VFMs from names (presets ``sd-2-1``, ``sd-2-1-base``, or a ``{"kind": "sd", ...}`` spec file) and
weight sources (``pretrained``, a local diffusers folder, ``random``); the features: :mod:`proxyclip_pl.sd_features`.

Needs the extra ``sd`` (``pip install 'proxyclip_pl[sd]'``: diffusers and transformers); the core does not.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .defaults import PRETRAINED, RANDOM
from .sd_features import (DEFAULT_ENSEMBLE, DEFAULT_T, DEFAULT_UP_FT_INDEX, StableDiffusionVFM, check_settings,
                          empty_prompt_ids)
from .weights import WeightsNotFoundError, download_reason, hub_cache, hub_unreachable

SD_KIND = "sd"
INSTALL_HINT = "pip install 'proxyclip_pl[sd]'"


@dataclass(frozen=True)
class SDPreset:
    """A Stable Diffusion model at its native resolution, in DIFT's semantic-correspondence setting."""

    repo: str
    input_size: int
    t: int = DEFAULT_T
    up_ft_index: int = DEFAULT_UP_FT_INDEX
    ensemble: int = DEFAULT_ENSEMBLE


SD_MODELS: dict[str, SDPreset] = {
    "sd-2-1": SDPreset("stabilityai/stable-diffusion-2-1", 768),
    "sd-2-1-base": SDPreset("stabilityai/stable-diffusion-2-1-base", 512),
}

#: the settings a spec, a preset or a keyword override of ``build_vfm`` gives
SETTINGS = ("t", "up_ft_index", "ensemble", "input_size")
#: the architecture configs of ``random`` weights (``scheduler``: optional, default ``DDIMScheduler()``)
ARCHITECTURE = ("unet", "vae", "text_encoder")
SPEC_KEYS = ("kind", "repo", *SETTINGS, *ARCHITECTURE, "scheduler")
#: a diffusers folder (``hf download`` / ``save_pretrained``)
SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def _spec_kind(name: str) -> str | None:
    """The ``kind`` of a readable JSON object file, else ``None`` (the timm path reports the file's problems)."""
    if not name.endswith(".json"):
        return None
    try:
        spec = json.loads(Path(name).read_text())
    except (OSError, ValueError):
        return None
    return spec.get("kind") if isinstance(spec, dict) else None


def is_sd_name(name: str) -> bool:
    """Whether ``name`` (a ``--vfm`` value) is an SD preset or a spec file with ``"kind": "sd"``."""
    return name in SD_MODELS or _spec_kind(name) == SD_KIND


def read_sd_spec(name: str) -> dict[str, Any]:
    """The settings and configs of an SD name (preset or spec file), defaults filled in, checked
    (``ValueError`` naming the key)."""
    if name in SD_MODELS:
        p = SD_MODELS[name]
        spec: dict[str, Any] = {"kind": SD_KIND, "repo": p.repo, "t": p.t, "up_ft_index": p.up_ft_index,
                                "ensemble": p.ensemble, "input_size": p.input_size}
    else:
        spec = json.loads(Path(name).read_text())
        unknown = sorted(set(spec) - set(SPEC_KEYS))
        if unknown:
            raise ValueError(f"SD VFM spec {name}: unknown key(s) {', '.join(map(repr, unknown))}; "
                             f"known: {', '.join(SPEC_KEYS)}")
        for key in (*ARCHITECTURE, "scheduler"):
            if key in spec and not isinstance(spec[key], dict):
                raise ValueError(f"SD VFM spec {name}: {key!r} must be a JSON object (a config), got {spec[key]!r}")
        if spec.get("repo") is not None and not isinstance(spec["repo"], str):
            raise ValueError(f"SD VFM spec {name}: 'repo' must be a Hugging Face repo id, got {spec['repo']!r}")
        spec = {"repo": None, "t": DEFAULT_T, "up_ft_index": DEFAULT_UP_FT_INDEX, "ensemble": DEFAULT_ENSEMBLE,
                "input_size": None, **spec}
    _check_spec_settings(spec)
    return spec


def _check_spec_settings(spec: dict[str, Any]) -> None:
    """The settings' types, and their ranges where the spec's own configs tell them."""
    up_blocks = (spec.get("unet") or {}).get("up_block_types")
    timesteps = spec["scheduler"].get("num_train_timesteps", 1000) if "scheduler" in spec else None
    check_settings(spec["t"], spec["up_ft_index"], spec["ensemble"], spec["input_size"],
                   num_up_blocks=len(up_blocks) if isinstance(up_blocks, (list, tuple)) else None,
                   num_train_timesteps=timesteps if isinstance(timesteps, int) else None)


def require_sd_extra() -> None:
    """``ValueError`` (a user error) naming the extra when diffusers or transformers cannot be imported."""
    try:
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"Stable Diffusion VFMs need diffusers and transformers ({exc}): {INSTALL_HINT}") from None


def check_sd_name(name: str) -> None:
    """Cheap check of an SD name (nothing is built): a preset or a valid spec, and the extra installed."""
    read_sd_spec(name)
    require_sd_extra()


def build_sd_vfm(name: str, weights: str = PRETRAINED, seed: int = 0, **overrides: Any) -> StableDiffusionVFM:
    """A frozen SD VFM (eval mode).

    Args:
        name: ``sd-2-1``, ``sd-2-1-base`` or a spec file ``{"kind": "sd", ...}``.
        weights: ``pretrained`` (the spec's ``repo`` through the Hugging Face cache), a local diffusers folder
            (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``) or ``random`` (the spec's configs, seeded).
        seed: seed of ``random`` weights and of the fixed per-window draws.
        overrides: ``t``, ``up_ft_index``, ``ensemble``, ``input_size``.
    """
    unknown = sorted(set(overrides) - set(SETTINGS))
    if unknown:
        raise ValueError(f"unknown SD VFM option(s) {', '.join(map(repr, unknown))}; known: {', '.join(SETTINGS)}")
    spec = {**read_sd_spec(name), **overrides}
    if overrides:  # read_sd_spec checked the spec's own settings
        _check_spec_settings(spec)
    require_sd_extra()
    if weights == RANDOM:
        unet, vae, text_encoder, tokenizer, scheduler = _random_components(spec, name, seed)
        source = f"{name} (random, seed {seed})"
    elif weights == PRETRAINED:
        repo = spec.get("repo")
        if not repo:
            raise ValueError(f"SD VFM spec {name} has no 'repo' for weights '{PRETRAINED}': add the Hugging Face "
                             f"repo id, or pass a local diffusers folder or '{RANDOM}' as weights")
        unet, vae, text_encoder, tokenizer, scheduler = _pretrained_components(repo)
        source = repo
    else:
        unet, vae, text_encoder, tokenizer, scheduler = _folder_components(Path(weights))
        source = str(weights)
    prompt_embeds = empty_prompt_embedding(text_encoder, tokenizer)
    vae.decoder = None  # as DIFT: only the encoder is used
    if hasattr(vae, "post_quant_conv"):
        vae.post_quant_conv = None
    return StableDiffusionVFM(unet, vae, scheduler, prompt_embeds, t=spec["t"], up_ft_index=spec["up_ft_index"],
                              ensemble=spec["ensemble"], input_size=spec["input_size"], seed=seed, source=source)


@torch.no_grad()
def empty_prompt_embedding(text_encoder: torch.nn.Module, tokenizer: Any = None) -> torch.Tensor:
    """[1, L, D] ``text_encoder(ids)[0]`` of the empty prompt: the tokenizer's ids (``""`` padded to its
    ``model_max_length``, as diffusers' ``encode_prompt``), or SD-2.x's ids up to ``max_position_embeddings``
    without a tokenizer (``random`` weights)."""
    if tokenizer is None:
        ids = empty_prompt_ids(text_encoder.config.max_position_embeddings)
    else:
        ids = torch.tensor([tokenizer("", padding="max_length", max_length=tokenizer.model_max_length,
                                      truncation=True).input_ids])
    return text_encoder.eval()(ids.to(text_encoder.device))[0].float()


def _random_components(spec: dict[str, Any], name: str, seed: int) -> tuple[Any, ...]:
    """Seeded random UNet, VAE and text encoder from the spec's configs (the caller's RNG untouched)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    missing = [key for key in ARCHITECTURE if key not in spec]
    if missing:
        raise ValueError(f"SD VFM {name}: weights '{RANDOM}' need the architecture configs "
                         f"{', '.join(map(repr, missing))} (missing key(s) of the spec)")

    def make(key: str, build: Any) -> Any:
        try:
            return build(dict(spec[key]))
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ValueError(f"SD VFM spec {name}: bad {key!r} config: {exc}") from exc

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = make("text_encoder", lambda c: CLIPTextModel(CLIPTextConfig(**c)))
        vae = make("vae", AutoencoderKL.from_config)
        unet = make("unet", UNet2DConditionModel.from_config)
    scheduler = make("scheduler", DDIMScheduler.from_config) if "scheduler" in spec else DDIMScheduler()
    return unet, vae, text_encoder, None, scheduler


def _load(source: str | Path) -> tuple[Any, ...]:
    """The five components from a repo id or a folder (diffusers layout), float32 on the CPU."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    # diffusers' advice to install accelerate, and huggingface_hub's notice about an argument diffusers still passes:
    # nothing a user of this package can act on
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", ".*local_dir_use_symlinks.*")
    src = str(source)
    unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(src, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(src, subfolder="text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(src, subfolder="tokenizer")
    scheduler = DDIMScheduler.from_pretrained(src, subfolder="scheduler")  # as DIFT
    return unet, vae, text_encoder, tokenizer, scheduler


def _pretrained_components(repo: str) -> tuple[Any, ...]:
    hub_unreachable()  # offline: fail at once instead of retrying
    try:
        return _load(repo)
    except Exception as exc:
        where = hub_cache(None)
        raise WeightsNotFoundError(
            f"SD weights {repo} are not available: {download_reason(exc, where)}. On a connected machine run "
            f"`hf download {repo}` (Hugging Face cache: {where}), or pass a local diffusers folder as weights"
        ) from exc


def _folder_components(path: Path) -> tuple[Any, ...]:
    if not path.exists():
        raise WeightsNotFoundError(
            f"SD weights folder not found: {path} (VFM weights for Stable Diffusion: '{PRETRAINED}', '{RANDOM}' "
            f"or a local diffusers folder with {'/ '.join(SUBFOLDERS)}/)")
    if not path.is_dir():
        raise ValueError(f"SD weights {path} is a file: pass a diffusers folder ({'/ '.join(SUBFOLDERS)}/, as "
                         "`hf download` or save_pretrained writes it)")
    missing = [s for s in SUBFOLDERS if not (path / s).is_dir()]
    if missing:
        raise ValueError(f"SD weights folder {path} lacks {', '.join(s + '/' for s in missing)} (a diffusers folder "
                         f"has {'/ '.join(SUBFOLDERS)}/, as `hf download` or save_pretrained writes it)")
    try:
        return _load(path)
    except Exception as exc:
        raise ValueError(f"cannot load SD weights from folder {path}: {type(exc).__name__}: "
                         f"{' '.join(str(exc).split())}") from exc
