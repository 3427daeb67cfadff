"""Segmenters from names: the towers (:mod:`proxyclip_pl.towers`) built once and shared by every benchmark's
segmenter, text embeddings through the cache, the text tower freed afterwards."""
from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn

from .defaults import DEFAULT_CLIP, DEFAULT_SAM, DEFAULT_VFM, PRETRAINED
from .native_protocols import Protocol
from .towers import build_clip, build_sam, build_vfm, check_vfm_name, resolve_clip_weights

# open_clip, timm and the modules that import them (.model, .methods, .segmenter, .vocabulary, .text_cache)
# are imported where they are used: importing this module costs torch only.
if TYPE_CHECKING:
    from .model import ProxyCLIP
    from .segmenter import Segmenter


def build_proxyclip(vocabulary: Sequence[Sequence[str]], **options: Any) -> "ProxyCLIP":
    """Build :class:`~proxyclip_pl.ProxyCLIP` from names (``vfm=None`` for the no-VFM baselines).

    Args:
        vocabulary: one list of synonyms per class.
        options: where the towers come from (the fields of :class:`Towers`: ``clip``, ``clip_weights``, ``vfm``,
            ``vfm_weights``, ``seed``, ``device``, ``cache_dir``, ``text_cache_dir``, ``keep_text_tower``) and
            :class:`~proxyclip_pl.ProxyCLIP`'s constructor keywords (``beta``, ``slide_crop``, ...).
    Returns:
        the model on ``device``.
    """
    towers, proxyclip_kwargs = _split_tower_options("proxyclip", options)
    return _build_on_shared_towers("proxyclip", {0: (vocabulary, proxyclip_kwargs)}, towers)[0]


@dataclass(frozen=True)
class Towers:
    """Where the towers of a build come from.

    Attributes:
        clip, clip_weights: open_clip model name (or config JSON) and weights (pretrained tag, checkpoint path or
            ``random``; ``None``: the preset's tag).
        vfm, vfm_weights: timm VFM name (or spec JSON) and weights (``pretrained``, checkpoint path or ``random``);
            for the methods whose spec asks for a VFM (``vfm=None``: ProxyCLIP's ``maskclip``/``clip`` attention).
        sam, sam_weights: timm samvit name (or spec JSON) and weights of Trident's SAM image encoder.
        masks: CorrCLIP's region-mask source (``--masks``: a folder, ``sam2`` or ``none``), see
            :func:`proxyclip_pl.region_masks.mask_source`.
        seed: seed of ``random`` weights (identical on every process).
        device: where the towers and the segmenters go.
        cache_dir: open_clip / Hugging Face download cache.
        text_cache_dir: where text embeddings are cached (default: :func:`text_cache.default_cache_dir`);
            ``False`` disables the cache.
        keep_text_tower: the text tower is only needed for the text embeddings; it is freed after they are
            computed (ViT-B/16: 252 MB) unless this is set.
    """

    clip: str = DEFAULT_CLIP
    clip_weights: str | None = None
    vfm: str | None = DEFAULT_VFM
    vfm_weights: str = PRETRAINED
    sam: str = DEFAULT_SAM
    sam_weights: str = PRETRAINED
    masks: str | None = None
    seed: int = 0
    device: str | torch.device = "cpu"
    cache_dir: str | None = None
    text_cache_dir: str | Path | None | bool = None
    keep_text_tower: bool = False


def _split_tower_options(method: str, options: Mapping[str, Any]) -> tuple[Towers, dict[str, Any]]:
    """Keyword options -> (the :class:`Towers` fields among them, with the method's own towers where a field is
    not given, e.g. Trident's DINO ViT-B/16; the rest: constructor keywords)."""
    from .registry import method_spec

    fields = {f.name for f in dataclasses.fields(Towers)}
    given = method_spec(method).fill_towers({k: v for k, v in options.items() if k in fields})
    return Towers(**given), {k: v for k, v in options.items() if k not in fields}


def _build_on_shared_towers(method: str, jobs: Mapping[Hashable, tuple[Sequence[Sequence[str]], dict[str, Any]]],
                            towers: Towers) -> dict[Hashable, nn.Module]:
    """One ``method`` segmenter per job ``(vocabulary, constructor keywords)``, all on ONE CLIP (and, for
    ProxyCLIP, one VFM): the towers are built once, every vocabulary's text embeddings are computed (cached)
    before the text tower is freed, and the segmenters share the tower modules."""
    from .registry import method_spec

    spec = method_spec(method)
    t = towers
    if spec.uses_vfm and t.vfm is not None:
        check_vfm_name(t.vfm)  # a wrong VFM name fails before minutes of CLIP loading and text encoding
    clip_model, tokenizer = build_clip(t.clip, t.clip_weights, seed=t.seed, cache_dir=t.cache_dir)
    clip_model.to(t.device)
    for vocabulary, kwargs in jobs.values():
        if "text_embeddings" not in kwargs:
            kwargs["text_embeddings"] = text_embeddings_for(
                clip_model, tokenizer, vocabulary, t.clip, t.clip_weights, t.seed, t.text_cache_dir
            )
    if not t.keep_text_tower:
        # Before any VFM is built, so that its weights reuse the freed memory (lower peak RSS).
        release_text_tower(clip_model)
    vision: dict[str, Any] = {"clip": clip_model}
    if spec.uses_vfm:
        vfm_model, kind = (None, "dino") if t.vfm is None else build_vfm(t.vfm, t.vfm_weights, seed=t.seed)
        vision["vfm"] = vfm_model if vfm_model is None else vfm_model.to(t.device)
    if "sam" in spec.towers:
        vision["sam"] = build_sam(t.sam, t.sam_weights, seed=t.seed).to(t.device)
    if "masks" in spec.towers:
        vision["masks"] = t.masks
    vision = {name: vision[name] for name in spec.towers}
    built = {}
    for key, (vocabulary, kwargs) in jobs.items():
        if spec.uses_vfm:
            kwargs.setdefault("vfm_kind", kind)
        built[key] = spec.segmenter.from_towers(vision, vocabulary, tokenizer=tokenizer, **kwargs).to(t.device)
    return built


def text_embeddings_for(
    clip_model: nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    vocabulary: Sequence[Sequence[str]],
    clip: str,
    clip_weights: str | None,
    seed: int = 0,
    text_cache_dir: str | Path | None | bool = None,
) -> torch.Tensor:
    """[Q, d] prompt-ensembled text embeddings of ``vocabulary`` (one row per synonym), through the
    content-keyed text cache (``text_cache_dir=False``: no cache)."""
    from .text_cache import cached_text_embeddings, weights_identity
    from .vocabulary import encode_text_embeddings, flatten_vocabulary

    queries = flatten_vocabulary(vocabulary)[0]
    if text_cache_dir is False:
        return encode_text_embeddings(clip_model, tokenizer, queries)
    weights = resolve_clip_weights(clip, clip_weights)
    name = clip if not clip.endswith(".json") else f"{Path(clip).resolve()}:{Path(clip).read_text()}"
    return cached_text_embeddings(
        clip_model, tokenizer, queries, name, weights_identity(weights, seed), text_cache_dir or None
    )


def segmenter_classes() -> dict[str, type]:
    """Registered method name -> segmenter class (built-in, installed and registered at run time)."""
    from .registry import method_sources, method_spec

    return {name: method_spec(name).segmenter for name in method_sources()}


def build_segmenter(method: str, vocabulary: Sequence[Sequence[str]], protocol: "Protocol", **options: Any) -> "Segmenter":
    """Build a built-in method's segmenter under an inference protocol.

    Args:
        method: ``proxyclip``, ``maskclip``, ``clip``, ``sclip``, ``naclip`` or ``clearclip``.
        vocabulary: one list of synonyms per class.
        protocol: a :class:`~proxyclip_pl.native_protocols.Protocol` (e.g. from
            :func:`~proxyclip_pl.native_protocols.protocol_for`): resize, windows, logit scale, thresholds, PAMR.
        options: the towers and method keywords of :func:`build_segmenters` (``clip``, ``clip_weights``, ``vfm``,
            ``vfm_weights``, ``seed``, ``device``, ``text_cache_dir``, ..., ``beta``, ``gaussian_std``).
    Returns:
        the segmenter on ``device``.
    """
    return build_segmenters(method, {0: (vocabulary, protocol)}, **options)[0]


def build_segmenters(
    method: str,
    jobs: Mapping[Hashable, tuple[Sequence[Sequence[str]], "Protocol"]],
    window_batch_size: int | None = None,
    **options: Any,
) -> dict[Hashable, "Segmenter"]:
    """Several segmenters of one method (e.g. one per benchmark) on towers built ONCE.

    Args:
        method: ``proxyclip``, ``maskclip``, ``clip``, ``sclip``, ``naclip`` or ``clearclip``.
        jobs: key -> (vocabulary, protocol) (see :func:`build_segmenter`).
        window_batch_size: windows per encoder call (``None``: 8 on GPU, 1 on CPU).
        options: where the towers come from (the fields of :class:`Towers`) and further constructor keywords
            (e.g. ``attention``, ``beta`` for ProxyCLIP; ``gaussian_std`` for NACLIP).
    Returns:
        key -> segmenter on ``device``. All share the same CLIP (and VFM) modules, so segmenters whose windows
        agree share their encoder (:func:`~proxyclip_pl.segmenter.shares_encoder`) and can be evaluated in one
        pass (:func:`~proxyclip_pl.segmenter.shared_slide_logits`).
    """
    from .native_protocols import Protocol
    from .segmenter import protocol_kwargs

    from .registry import method_spec

    method_spec(method)  # ValueError naming the known methods
    for _vocabulary, protocol in jobs.values():
        if not isinstance(protocol, Protocol):
            raise TypeError(f"protocol must be a Protocol, got {type(protocol).__name__}")
    towers, method_kwargs = _split_tower_options(method, options)
    constructor_jobs = {
        key: (vocabulary, {**protocol_kwargs(protocol), "window_batch_size": window_batch_size, **method_kwargs})
        for key, (vocabulary, protocol) in jobs.items()
    }
    return _build_on_shared_towers(method, constructor_jobs, towers)


def release_text_tower(clip_model: nn.Module) -> None:
    """Free an open_clip CLIP's text tower in place (``encode_text`` no longer works afterwards)."""
    for name in ("transformer", "token_embedding", "ln_final", "text_projection", "positional_embedding", "attn_mask"):
        if hasattr(clip_model, name):
            setattr(clip_model, name, None)
