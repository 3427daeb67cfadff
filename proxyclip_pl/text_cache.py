"""On-disk cache of prompt-ensembled text embeddings.

Encoding 80 templates x Q queries is the slowest part of building a model for a large vocabulary
(COCO-Stuff: 13,680 prompts), and it is the same on every run and every rank. The cache key covers
everything the embeddings depend on: the CLIP model name, its weights (tag, or checkpoint path +
size + mtime, or the seed of a random init), the queries in order, the templates and open_clip's version.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import torch

from .vocabulary import TEMPLATES, encode_text_embeddings

CACHE_ENV_VAR = "PROXYCLIP_CACHE"


def default_cache_dir() -> Path:
    """``$PROXYCLIP_CACHE/text_embeddings`` or ``~/.cache/proxyclip_pl/text_embeddings``."""
    base = os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "proxyclip_pl"
    return Path(base) / "text_embeddings"


def weights_identity(weights: str, seed: int) -> str:
    """A string that changes whenever the weights' content may change."""
    if weights == "random":
        return f"random:{seed}"
    path = Path(weights)
    if path.is_file():
        stat = path.stat()
        return f"file:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return f"tag:{weights}"


def cache_key(model_name: str, weights_id: str, queries: Sequence[str]) -> str:
    import open_clip

    payload = {
        "model": model_name,
        "weights": weights_id,
        "queries": list(queries),
        "templates": [t("{}") for t in TEMPLATES],
        "open_clip": open_clip.__version__,
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
    embeddings = encode_text_embeddings(clip_model, tokenizer, queries).cpu()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(embeddings, tmp)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs the re-encoding next time
    return embeddings
