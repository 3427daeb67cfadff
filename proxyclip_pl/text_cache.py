"""On-disk cache of prompt-ensembled text embeddings.

Encoding 80 templates x Q queries is the slowest part of building a model for a large vocabulary
(COCO-Stuff: 13,680 prompts), and it is the same on every run and every rank. The cache key covers
everything the embeddings depend on: the CLIP model name, its weights (tag, the sha256 of a checkpoint
file's contents, or the seed of a random init), the queries in order, the templates, open_clip's
version and :data:`EMBEDDING_VERSION`, the version of the embedding procedure itself.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import open_clip
import torch

from .console import Progress
from .vocabulary import TEMPLATES, encode_text_embeddings

CACHE_ENV_VAR = "PROXYCLIP_CACHE"

#: Version of the embedding procedure (vocabulary.encode_text_embeddings: templates, normalisations,
#: averaging, and how build_clip builds the text tower). Bump it whenever that procedure changes, so that
#: entries written by the old procedure are no longer served.
EMBEDDING_VERSION = 1

#: sha256 of checkpoint files, per (path, device, inode, size, mtime_ns, ctime_ns): a big checkpoint is read
#: once per process. ctime changes on every write, even one that restores mtime (cp -p, rsync -a).
_FILE_DIGESTS: dict[tuple[str, int, int, int, int, int], str] = {}


def default_cache_dir() -> Path:
    """``$PROXYCLIP_CACHE/text_embeddings`` or ``~/.cache/proxyclip_pl/text_embeddings``."""
    base = os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "proxyclip_pl"
    return Path(base) / "text_embeddings"


def _sha256_of_file(path: Path) -> str:
    """Hex sha256 of the file's contents, read in 16 MiB chunks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_fingerprint(path: str | Path) -> str:
    """Content fingerprint (sha256) of a file, memoised per process on its path and stat."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _FILE_DIGESTS:
        _FILE_DIGESTS[key] = _sha256_of_file(path)
    return _FILE_DIGESTS[key]


def weights_identity(weights: str, seed: int) -> str:
    """A string that changes whenever the weights' content may change.

    ``random`` -> the seed; a checkpoint file -> the sha256 of its contents (not its path, size or mtime:
    a same-size replacement that keeps the mtime must not hit the old entry); a tag -> the tag.
    """
    if weights == "random":
        return f"random:{seed}"
    path = Path(weights)
    if path.is_file():
        return f"sha256:{file_fingerprint(path)}"
    return f"tag:{weights}"


def cache_key(model_name: str, weights_id: str, queries: Sequence[str]) -> str:
    """32 hex digits identifying the [Q, d] embeddings of ``queries`` under this model, weights and procedure."""
    payload = {
        "model": model_name,
        "weights": weights_id,
        "queries": list(queries),
        "templates": [t("{}") for t in TEMPLATES],
        "open_clip": open_clip.__version__,
        "embedding_version": EMBEDDING_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def cached_text_embeddings(
    clip_model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    queries: Sequence[str],
    model_name: str,
    weights_id: str,
    cache_dir: str | Path | None = None,
) -> torch.Tensor:
    """Load the [Q, d] embeddings from the cache, or encode and store them (atomic write, rank-safe)."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"{cache_key(model_name, weights_id, queries)}.pt"
    if path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if cached.shape[0] == len(queries):
            return cached
    progress = Progress(f"text embeddings, {len(queries)} queries x {len(TEMPLATES)} templates (prompts)",
                        len(queries) * len(TEMPLATES))
    embeddings = encode_text_embeddings(clip_model, tokenizer, queries, progress=progress.update).cpu()
    progress.close(f"; cached in {folder} for the next runs")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(embeddings, tmp)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs the re-encoding next time
    return embeddings
