"""Where weights come from: local checkpoint files (their format, damage, OpenAI's layout) and the Hugging Face
hub (its cache, reachability, why a download failed), with the errors a user sees for each."""
from __future__ import annotations

import functools
import logging
import os
import pickle
import re
import socket
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

import torch
from torch import nn

from .defaults import PRETRAINED, RANDOM


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are neither cached nor downloadable; the message says what to fetch and where."""


class CorruptCheckpointError(ValueError):
    """A local checkpoint file cannot be read: empty, truncated (e.g. an interrupted download) or damaged."""


class NotACheckpointError(ValueError):
    """A weights file is no checkpoint: not a PyTorch / safetensors file at all (an image, text, an HTML error
    page, ...), no state dict, or pickled Python objects that cannot be loaded safely."""


def is_weights_path(weights: str) -> bool:
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


def refused_pickle(what: str, path: Path, exc: BaseException) -> NotACheckpointError | None:
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


@contextmanager
def quiet_root_log(*prefixes: str) -> Iterator[None]:
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


def hub_cache(cache_dir: str | None) -> str:
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
    proxies = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    if any(os.environ.get(name) for name in proxies):
        return None  # behind a proxy a direct connection proves nothing: let the hub client try
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=3).close()
        return None
    except OSError as exc:
        constants.HF_HUB_OFFLINE = True
        return f"no network: {host}:{port} cannot be reached ({exc.strerror or type(exc).__name__})"


def download_reason(exc: Exception, where: str) -> str:
    """Why pretrained weights could not be had: no network or offline and not cached, or the download's error."""
    from huggingface_hub import constants

    if hub_unreachable() is not None:
        return f"{hub_unreachable()}, and they are not in the cache {where}"
    if constants.HF_HUB_OFFLINE:
        return f"HF_HUB_OFFLINE=1 and they are not in the cache {where}"
    return f"the download failed ({type(exc).__name__}: {' '.join(str(exc).split())})"


def seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Build under a fixed seed without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


