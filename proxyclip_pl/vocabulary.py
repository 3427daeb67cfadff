"""Query vocabularies and the prompt-ensembled text classifier.

A vocabulary is ``list[list[str]]``: one entry per class, in label order, each a list of synonyms.
It is flattened into Q query strings; ``query_to_class[q]`` gives the class of query ``q``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

Vocabulary = list[list[str]]

#: The 80 OpenAI ImageNet prompt templates, in the official order.
TEMPLATES: tuple[Callable[[str], str], ...] = tuple(OPENAI_IMAGENET_TEMPLATES)

SYNONYM_SEPARATOR = "; "


def parse_vocabulary(text: str) -> Vocabulary:
    """Parse a vocabulary file's text: one class per non-empty line, synonyms split on ``'; '``.

    Commas are not separators (``"traffic light"`` and ``"a, b"`` stay whole); every name is stripped,
    so a trailing space (Context's ``"wood "``) disappears.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    return [[name.strip() for name in line.split(SYNONYM_SEPARATOR)] for line in lines]


def load_vocabulary(path: str | Path) -> Vocabulary:
    """Read and validate a vocabulary file (see :func:`parse_vocabulary`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    vocabulary = parse_vocabulary(path.read_text(encoding="utf-8"))
    validate_vocabulary(vocabulary)
    return vocabulary


def validate_vocabulary(vocabulary: Sequence[Sequence[str]]) -> None:
    """Raise ``ValueError`` for an empty vocabulary, a class without names or an empty name."""
    if isinstance(vocabulary, str) or len(vocabulary) == 0:
        raise ValueError("vocabulary must be a non-empty list of classes, each a list of names")
    for c, names in enumerate(vocabulary):
        if isinstance(names, str):
            raise ValueError(f"vocabulary class {c} must be a list of names, got the string {names!r}")
        if len(names) == 0:
            raise ValueError(f"vocabulary class {c} has no names")
        for name in names:
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"vocabulary class {c} has an empty or non-string name: {name!r}")


def flatten_vocabulary(vocabulary: Sequence[Sequence[str]]) -> tuple[list[str], torch.Tensor]:
    """Flatten synonyms into queries.

    Returns:
        queries: Q strings, class by class, synonyms in file order.
        query_to_class: LongTensor [Q], non-decreasing, values in [0, C).
    """
    validate_vocabulary(vocabulary)
    queries = [name.strip() for names in vocabulary for name in names]
    query_to_class = torch.tensor([c for c, names in enumerate(vocabulary) for _ in names], dtype=torch.long)
    return queries, query_to_class


@torch.no_grad()
def encode_text_embeddings(
    clip_model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    queries: Sequence[str],
    templates: Sequence[Callable[[str], str]] = TEMPLATES,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Prompt-ensembled text embeddings.

    For each query: fill every template, encode, L2-normalise each embedding, average over templates
    and L2-normalise again.

    Args:
        batch_size: prompts per forward; default 256 on GPU, 16 on CPU (where larger batches are no
            faster and cost hundreds of MB of peak memory).
    Returns:
        FloatTensor [Q, d], unit rows, on the CLIP model's device.
    """
    device = next(clip_model.parameters()).device
    batch_size = batch_size or (256 if device.type == "cuda" else 16)
    prompts = [template(query) for query in queries for template in templates]
    chunks = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[start:start + batch_size]).to(device)
        chunks.append(F.normalize(clip_model.encode_text(tokens).float(), dim=-1))
    per_prompt = torch.cat(chunks).view(len(queries), len(templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)
