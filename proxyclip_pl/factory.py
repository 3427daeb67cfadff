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

import dataclasses
import difflib
import functools
import json
import logging
import os
import pickle
import re
import socket
import warnings
import zipfile
from collections.abc import Hashable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence
from urllib.parse import urlparse

import torch
from torch import nn

from .defaults import DEFAULT_CLIP, DEFAULT_VFM, PRETRAINED, RANDOM
from .native_protocols import Protocol

# open_clip, timm and the modules that import them (.model, .methods, .segmenter, .vocabulary, .text_cache)
# are imported where they are used: importing this module costs torch only.
if TYPE_CHECKING:
    from .model import ProxyCLIP
    from .segmenter import Segmenter



class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are neither cached nor downloadable; the message says what to fetch and where."""


class CorruptCheckpointError(ValueError):
    """A local checkpoint file cannot be read: empty, truncated (e.g. an interrupted download) or damaged."""


class NotACheckpointError(ValueError):
    """A weights file is no checkpoint: not a PyTorch / safetensors file at all (an image, text, an HTML error
    page, ...), no state dict, or pickled Python objects that cannot be loaded safely."""


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
    from timm.models.vision_transformer_sam import VisionTransformerSAM

    if isinstance(model, VisionTransformerSAM):
        return "sam"
    if getattr(model, "num_reg_tokens", 0) > 0 or getattr(model, "no_embed_class", False):
        return "dinov2"
    if (getattr(model, "pretrained_cfg", None) or {}).get("tag") == "mae":
        return "mae"
    return "dino"


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


def _is_path(weights: str) -> bool:
    return os.sep in weights or weights.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


#: Scalar entries of OpenAI's CLIP checkpoints (TorchScript archives and their state dicts) that open_clip's
#: own checkpoints never have.
OPENAI_CHECKPOINT_ENTRIES = ("input_resolution", "context_length", "vocab_size")


#: Bytes read from the start of a weights file to tell its format.
_HEAD_BYTES = 512

#: torch.save's legacy (non-zip) format starts with its magic number, pickled: as LONG1 (pickle protocol 2 and up,
#: after the protocol and frame opcodes) or as a decimal long (protocols 0 and 1).
_TORCH_LEGACY_MAGIC = (b"\x8a\x0a" + torch.serialization.MAGIC_NUMBER.to_bytes(10, "little"),
                       b"L%dL\n" % torch.serialization.MAGIC_NUMBER)

#: First bytes of files that are given as weights by mistake -> what they are.
_FILE_SIGNATURES = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x1f\x8b", "gzip-compressed data: decompress it first"),
    (b"version https://git-lfs", "a Git LFS pointer, not the file it points to: run `git lfs pull`"),
)


def _torch_format(head: bytes) -> str | None:
    """``zip`` (torch.save's default format, TorchScript archives), ``legacy`` (torch.save's old format),
    ``tar`` (its oldest) from a file's first bytes; ``None``: no file torch.save writes."""
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if any(magic in head[:32] for magic in _TORCH_LEGACY_MAGIC):
        return "legacy"
    return "tar" if head[257:262] == b"ustar" else None


def _describe_bytes(head: bytes) -> str:
    """What a file that is no checkpoint seems to be, from its first bytes (for the message)."""
    for signature, what in _FILE_SIGNATURES:
        if head.startswith(signature):
            return what
    if head[8:9] == b"{":  # 8-byte header length, then the JSON header
        return "it looks like a safetensors file: give it the .safetensors suffix"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle not written by torch.save"
    if b"<html" in head.lower() or head.lstrip().lower().startswith(b"<!doctype"):
        return "an HTML page: a failed download may have saved the error page"
    if all(32 <= b < 127 or b in b"\t\n\r" for b in head):
        return "a text file"
    return "unrecognised binary data"


def _other_weights(what: str) -> str:
    """The weights to pass instead of a bad file, for ``what`` (``CLIP`` or ``VFM``)."""
    if what == "CLIP":
        return f"a pretrained tag (e.g. 'openai'; see open_clip.list_pretrained()) or '{RANDOM}'"
    return f"'{PRETRAINED}' (timm's weights for the model name) or '{RANDOM}'"


def _not_a_checkpoint(what: str, path: Path, found: str) -> NotACheckpointError:
    """The one-line error for a weights file that is not a checkpoint; ``found``: what it is instead."""
    return NotACheckpointError(
        f"{what} weights file {path} is not a PyTorch or safetensors checkpoint ({found}; "
        f"{path.stat().st_size:,} bytes); pass a checkpoint file (a state dict saved with torch.save or "
        f"safetensors), {_other_weights(what)}"
    )


def _refused_pickle(what: str, path: Path, exc: BaseException) -> NotACheckpointError | None:
    """The one-line error for a checkpoint whose pickled Python objects a model library refused to load
    (tensors-only unpickling), naming an object; ``None`` when ``exc`` is another failure.

    The libraries forward PyTorch's text (several paragraphs, "please file an issue") for this case.
    """
    seen: list[BaseException] = []
    while exc is not None and all(exc is not e for e in seen):
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    refusal = next((e for e in seen if isinstance(e, pickle.UnpicklingError)), None)
    if refusal is None:
        return None
    names = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(refusal))))
    example = f" (e.g. {', '.join(names)})" if names else ""
    return NotACheckpointError(
        f"{what} checkpoint {path} holds pickled Python objects{example} that cannot be loaded safely, not "
        f"only tensors; pass a checkpoint of tensors (e.g. saved with torch.save(model.state_dict(), path), or "
        f"a .safetensors file), {_other_weights(what)}"
    )


def _safetensors_entries(path: Path, head: bytes, what: str,
                         corrupt: Callable[[str], CorruptCheckpointError]) -> dict[str, None]:
    """Entry names of a .safetensors file (only its header is read)."""
    from safetensors import safe_open

    if len(head) > 8 and head[8:9] != b"{":  # a truncated file keeps its header's start; other files lack it
        raise _not_a_checkpoint(what, path, _describe_bytes(head))
    try:
        with safe_open(str(path), "pt") as f:
            return dict.fromkeys(f.keys())
    except Exception as exc:
        raise corrupt(f"{type(exc).__name__}: {exc}") from exc


def _zip_entry_names(path: Path) -> set[str]:
    """File names (without folders) in an intact zip archive."""
    with zipfile.ZipFile(path) as archive:
        return {n.rsplit("/", 1)[-1] for n in archive.namelist()}


def read_checkpoint(path: Path, what: str) -> dict[str, Any] | None:
    """Open a local checkpoint to check that it is readable and to see its top-level entries.

    Args:
        path: a torch.save file (zip or legacy format), a TorchScript archive or a .safetensors file.
        what: ``CLIP`` or ``VFM``, for the messages.
    Returns:
        The top-level mapping: tensors memory-mapped for torch zip files (cheap for big files), the state
        dict of a TorchScript archive, entry names with ``None`` values for safetensors (only the header
        is read). ``None`` when the file holds pickled Python objects that ``weights_only`` loading refuses
        (then the model library's own loader decides: timm allows some, e.g. ``argparse.Namespace``).
    Raises:
        CorruptCheckpointError: the file is empty, truncated or damaged.
        NotACheckpointError: the file is no PyTorch / safetensors file (text, an image, ...) or holds no
            state dict.
    """
    size = path.stat().st_size

    def corrupt(reason: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"{what} checkpoint {path} is corrupt or truncated ({size:,} bytes; {reason}); "
            "download or copy it again (an interrupted transfer leaves such files)"
        )

    if size == 0:
        raise corrupt("the file is empty")
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
    if path.suffix == ".safetensors":
        return _safetensors_entries(path, head, what, corrupt)
    fmt = _torch_format(head)
    if fmt is None:  # torch.load's errors for such files are misleading ("corrupt", "weights_only", KeyError)
        raise _not_a_checkpoint(what, path, _describe_bytes(head))
    zipped = fmt == "zip"  # torch.save's default format and TorchScript archives
    if zipped and not zipfile.is_zipfile(path):
        # A zip's directory sits at its end: any truncation loses it.
        raise corrupt("the zip directory at the end of the file is missing")
    names = _zip_entry_names(path) if zipped else set()
    if zipped and "data.pkl" not in names:
        raise _not_a_checkpoint(what, path, "a zip archive without torch's data.pkl, e.g. a NumPy .npz")
    try:
        if "constants.pkl" in names:  # TorchScript
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
                return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
        except (RuntimeError, OSError):
            if not zipped:
                raise
            # Not every intact zip checkpoint can be memory-mapped (e.g. old, unaligned ones): read it whole.
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not isinstance(exc.__cause__ or exc.__context__, EOFError):
            return None  # pickled Python objects (weights_only refuses them), not damage
        raise corrupt(f"{type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise corrupt(f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(checkpoint, Mapping):
        raise _not_a_checkpoint(what, path, f"a torch.save file of a {type(checkpoint).__name__}, not a state dict")
    return dict(checkpoint)


def is_openai_checkpoint(entries: Iterable[str]) -> bool:
    """True for OpenAI's CLIP checkpoint layout: open_clip's plain CLIP keys (no ``visual.trunk.`` timm
    tower) plus OpenAI's ``input_resolution`` / ``context_length`` / ``vocab_size`` entries."""
    keys = set(entries)
    return all(k in keys for k in OPENAI_CHECKPOINT_ENTRIES) and not any(k.startswith("visual.trunk.") for k in keys)


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
    if _is_path(weights):
        return True if checkpoint is not None and is_openai_checkpoint(checkpoint) else None
    import open_clip

    return bool(open_clip.get_pretrained_cfg(model_name, weights).get("quick_gelu", False))


@contextmanager
def _quiet_root_log(*prefixes: str) -> Iterator[None]:
    """Hide open_clip's root-logger lines starting with ``prefixes`` (misleading or duplicated here: the
    weights are loaded right afterwards, or the failure is raised with a better message)."""
    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(prefixes)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


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


def _hub_cache(cache_dir: str | None) -> str:
    """The Hugging Face hub cache the download would use."""
    from huggingface_hub import constants

    return str(cache_dir or constants.HF_HUB_CACHE)


@functools.lru_cache(maxsize=None)
def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached (``None``: it can, or the user chose offline mode already).

    Checked once per process with one connection attempt (3 s at most). When it fails, huggingface_hub is put in
    offline mode: cached weights still load, and missing ones fail at once with the message of the caller instead
    of about 50 s of retries ("Retrying in 8s") before the same failure.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return None
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=3).close()
        return None
    except OSError as exc:
        constants.HF_HUB_OFFLINE = True
        return f"no network: {host}:{port} cannot be reached ({exc.strerror or type(exc).__name__})"


def _download_reason(exc: Exception, where: str) -> str:
    """Why pretrained weights could not be had: no network or offline and not cached, or the download's error."""
    from huggingface_hub import constants

    if hub_unreachable() is not None:
        return f"{hub_unreachable()}, and they are not in the cache {where}"
    if constants.HF_HUB_OFFLINE:
        return f"HF_HUB_OFFLINE=1 and they are not in the cache {where}"
    return f"the download failed ({type(exc).__name__}: {' '.join(str(exc).split())})"


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
        with _quiet_root_log("No pretrained weights loaded"):  # open_clip's notice: random weights were asked for
            model = _seeded(seed, lambda: open_clip.create_model(model_name, pretrained=None))
    elif _is_path(weights):
        model = _clip_from_file(model_name, Path(weights))
    else:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if weights not in tags:
            raise ValueError(f"unknown pretrained tag {weights!r} for CLIP {model_name}; known: {', '.join(tags) or 'none'}")
        hub_unreachable()  # offline: fail at once instead of retrying
        try:
            # QuickGELU from the tag's pretrained config: open_clip itself only warns on a mismatch, e.g.
            # ViT-B-16 + openai / metaclip_400m / dfn2b would silently run GELU.
            with _quiet_root_log("Failed to download weights"):
                model = open_clip.create_model(
                    model_name,
                    pretrained=weights,
                    force_quick_gelu=bool(clip_needs_quick_gelu(model_name, weights)),
                    cache_dir=cache_dir,
                )
        except Exception as exc:
            cfg = open_clip.get_pretrained_cfg(model_name, weights)
            repo = (cfg.get("hf_hub") or "").strip("/")
            where = _hub_cache(cache_dir)
            if repo:
                how = f"`hf download {repo}" + (f" --cache-dir {cache_dir}`" if cache_dir else "`")
            else:
                how = f"download {cfg.get('url') or '?'} into {cache_dir or '~/.cache/clip'}"
            raise WeightsNotFoundError(
                f"CLIP weights {model_name}/{weights} are not available: {_download_reason(exc, where)}. "
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
        with _quiet_root_log("No pretrained weights loaded"):
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
        refused = _refused_pickle("CLIP", path, exc) if pickled else None
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
    _check_timm_name(_load_vfm_spec(name)[0] if name.endswith(".json") else name)


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
    _check_timm_name(name)
    kwargs = {"num_classes": 0, **timm_kwargs}
    if weights == RANDOM:
        model = _seeded(seed, lambda: timm.create_model(name, pretrained=False, **kwargs))
    elif weights == PRETRAINED:
        hub_unreachable()  # offline: fail at once instead of retrying
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as exc:
            cfg = timm.models.get_pretrained_cfg(name)
            if cfg is not None and cfg.hf_hub_id:
                where = _hub_cache(None)
                how = f"run `hf download {cfg.hf_hub_id}` (Hugging Face cache: {where})"
            else:
                where = os.path.join(torch.hub.get_dir(), "checkpoints")
                how = f"download {(cfg.url if cfg else None) or name} into {where}"
            raise WeightsNotFoundError(
                f"VFM weights for {name} are not available: {_download_reason(exc, where)}. On a connected "
                f"machine {how}, or pass a local checkpoint file as weights"
            ) from exc
    elif _is_path(weights):
        path = Path(weights)
        if not path.is_file():
            raise WeightsNotFoundError(f"VFM checkpoint not found: {path}")
        # A clear error for a truncated file or one that is no checkpoint, before timm's own loader.
        pickled = read_checkpoint(path, "VFM") is None  # Python objects: timm allows a few, refuses the rest
        try:
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
        except Exception as exc:
            refused = _refused_pickle("VFM", path, exc) if pickled else None
            raise refused or ValueError(f"cannot load VFM checkpoint {path} into {name}: {exc}") from exc
    else:
        raise ValueError(f"VFM weights must be '{PRETRAINED}', '{RANDOM}' or a checkpoint path, got {weights!r}")
    # The kind comes from the model's own configuration (registers, pretrained tag, class), not its name.
    return model.eval().requires_grad_(False), kind or vfm_kind_of(model)


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
    towers, proxyclip_kwargs = _split_tower_options(options)
    return _build_on_shared_towers("proxyclip", {0: (vocabulary, proxyclip_kwargs)}, towers)[0]


@dataclass(frozen=True)
class Towers:
    """Where the towers of a build come from.

    Attributes:
        clip, clip_weights: open_clip model name (or config JSON) and weights (pretrained tag, checkpoint path or
            ``random``; ``None``: the preset's tag).
        vfm, vfm_weights: timm VFM name (or spec JSON) and weights (``pretrained``, checkpoint path or ``random``);
            only ProxyCLIP uses them (``vfm=None``: its ``maskclip``/``clip`` attention).
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
    seed: int = 0
    device: str | torch.device = "cpu"
    cache_dir: str | None = None
    text_cache_dir: str | Path | None | bool = None
    keep_text_tower: bool = False


def _split_tower_options(options: Mapping[str, Any]) -> tuple[Towers, dict[str, Any]]:
    """Keyword options -> (the :class:`Towers` fields among them, the rest: constructor keywords)."""
    fields = {f.name for f in dataclasses.fields(Towers)}
    return (Towers(**{k: v for k, v in options.items() if k in fields}),
            {k: v for k, v in options.items() if k not in fields})


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
    vision: tuple[nn.Module | None, ...] = (clip_model,)
    if spec.uses_vfm:
        vfm_model, kind = (None, "dino") if t.vfm is None else build_vfm(t.vfm, t.vfm_weights, seed=t.seed)
        if vfm_model is not None:
            vfm_model.to(t.device)
        vision = (clip_model, vfm_model)
    built = {}
    for key, (vocabulary, kwargs) in jobs.items():
        if spec.uses_vfm:
            kwargs.setdefault("vfm_kind", kind)
        built[key] = spec.segmenter(*vision, vocabulary, tokenizer=tokenizer, **kwargs).to(t.device)
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
    towers, method_kwargs = _split_tower_options(options)
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
