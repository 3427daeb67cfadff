"""Query vocabularies and the prompt-ensembled text classifier.

A vocabulary is ``list[list[str]]``: one entry per class, in label order, each a list of synonyms.
It is flattened into Q query strings; ``query_to_class[q]`` gives the class of query ``q``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from .text_encoder import pooled_positions, token_budget_batches, truncated_encode_text, truncation_unsupported_reason

Vocabulary = list[list[str]]

#: The 80 OpenAI ImageNet prompt templates, in the official order.
TEMPLATES: tuple[Callable[[str], str], ...] = tuple(OPENAI_IMAGENET_TEMPLATES)

SYNONYM_SEPARATOR = "; "


def parse_vocabulary(text: str, source: str = "vocabulary", separator: str = SYNONYM_SEPARATOR) -> Vocabulary:
    """Parse a vocabulary file's text: one class per line, synonyms split on ``separator``.

    ``separator`` is ``'; '`` for ProxyCLIP's files and this package's format, so commas are not separators
    (``"traffic light"`` and ``"a, b"`` stay whole); SCLIP / NACLIP split on ``', '`` and ClearCLIP on ``','``
    (:mod:`proxyclip_pl.query_vocabularies`). Every name is stripped, so a trailing space (Context's
    ``"wood "``) disappears; CLIP's tokenizer collapses that whitespace anyway, so the prompts' tokens are
    those of the official unstripped strings. Class ids are line numbers, so a blank line
    before the last class (it would shift every later id by one), an empty synonym (``"cat; ; dog"``) or
    a line that repeats an earlier class (two ids for one class) raises ``ValueError`` naming ``source``
    and the line(s). Blank lines at the end are ignored. The same synonym in two *different* classes is
    allowed: the official COCO-Object vocabulary has ``bed`` both as a background synonym and a class.
    """
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    vocabulary: Vocabulary = []
    first_line: dict[tuple[str, ...], int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise ValueError(f"{source} line {number} is empty; every line up to the last one must name a class "
                             "(class ids are line numbers)")
        names = [name.strip() for name in line.split(separator)]
        if not all(names):
            raise ValueError(f"{source} line {number} has an empty synonym: {line!r}")
        key = tuple(names)
        if key in first_line:
            raise ValueError(f"{source} lines {first_line[key]} and {number} are the same class {line.strip()!r}")
        first_line[key] = number
        vocabulary.append(names)
    if not vocabulary:
        raise ValueError(f"{source} has no classes")
    return vocabulary


def load_vocabulary(path: str | Path, separator: str = SYNONYM_SEPARATOR) -> Vocabulary:
    """Read and validate a UTF-8 vocabulary file (see :func:`parse_vocabulary`); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:  # a ValueError whose message would not name the file
        raise ValueError(f"vocabulary file {path} is not UTF-8 text: {exc}") from None
    vocabulary = parse_vocabulary(text, source=f"vocabulary file {path}", separator=separator)
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


def vocabulary_sha256(vocabulary: Sequence[Sequence[str]]) -> str:
    """Hex sha256 of the parsed vocabulary (classes, their synonyms, in order): what the text side depends on."""
    return hashlib.sha256(json.dumps([list(names) for names in vocabulary]).encode()).hexdigest()


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
    truncate: bool = True,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Prompt-ensembled text embeddings.

    For each query: fill every template, encode, L2-normalise each embedding, average over templates
    and L2-normalise again.

    The text tower of an open_clip ``CLIP`` is causal and reads each prompt's embedding at its EOT token,
    so (``truncate=True``) prompts are sorted by their EOT position and each batch runs only up to its
    longest EOT position instead of all 77 positions (:mod:`proxyclip_pl.text_encoder`); a batch then
    holds up to ``batch_size * context_length`` tokens, the same activation memory as ``batch_size``
    full-length prompts. The embeddings equal those of the full-length forward up to float summation
    order (about 1e-7 per entry in fp32). Other text towers (``CustomTextCLIP``, Hugging Face, non-causal,
    ``pool_type='last'``) and ``truncate=False`` run ``clip_model.encode_text`` on ``batch_size``
    full-length prompts at a time, in prompt order.

    Args:
        batch_size: full-length prompts per forward (see above for the truncated path); default 256 on
            GPU, 16 on CPU (where larger batches are no faster and cost hundreds of MB of peak memory).
        truncate: allow the truncated forward (``False``: always the full-length ``encode_text``).
        progress: called with the number of prompts of each encoded batch (e.g. ``Progress.update``).
    Returns:
        FloatTensor [Q, d], unit rows, on the CLIP model's device.
    """
    device = next(clip_model.parameters()).device
    batch_size = batch_size or (256 if device.type == "cuda" else 16)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prompts = [template(query) for query in queries for template in templates]
    if not prompts:
        raise ValueError("no queries or no templates to encode")
    tokens = tokenizer(prompts)  # [N, context_length] on the CPU; 8.4 MB for COCO-Stuff's 13,680 prompts
    if truncate and tokens.ndim == 2 and truncation_unsupported_reason(clip_model) is None \
            and tokens.shape[1] == clip_model.positional_embedding.shape[0]:
        positions = pooled_positions(clip_model, tokens)
        order = torch.argsort(positions, stable=True)
        batches = token_budget_batches(positions[order] + 1, batch_size * tokens.shape[1], order)
    else:
        positions = None
        batches = [torch.arange(s, min(s + batch_size, len(prompts))) for s in range(0, len(prompts), batch_size)]
    per_prompt: torch.Tensor | None = None
    for index in batches:
        batch = tokens[index].to(device)
        if positions is None:
            features = clip_model.encode_text(batch)
        else:
            features = truncated_encode_text(clip_model, batch, positions[index])
        features = F.normalize(features.float(), dim=-1)
        if per_prompt is None:
            per_prompt = features.new_empty(len(prompts), features.shape[-1])
        per_prompt[index.to(device)] = features
        if progress is not None:
            progress(len(index))
    per_prompt = per_prompt.view(len(queries), len(templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)
