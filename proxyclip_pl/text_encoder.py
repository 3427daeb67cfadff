"""Text-tower forward that stops at the pooled token instead of running all ``context_length`` positions.

open_clip's ``CLIP.encode_text`` runs every prompt through all 77 token positions, but a prompt-ensemble
prompt (``"a photo of a {}."``) ends at its EOT token after 6-20 positions. The text transformer is causal:
the output at position ``p`` depends only on positions ``<= p``, so the pooled output (the EOT token for
``pool_type='argmax'`` / ``'eos'``, position 0 for ``'first'``) is the same whether or not the positions
after it are computed. :func:`encode_tokens` therefore runs a batch only up to its last pooled position
(slicing the positional embedding and the causal mask to that length), and :func:`pooled_positions` lets
a caller sort prompts by that position so that each batch holds prompts of similar length.

Anything this module cannot prove equivalent falls back to ``model.encode_text`` on the full-length
tokens: a model whose ``encode_text`` is not open_clip's plain ``CLIP.encode_text`` (``CustomTextCLIP``,
Hugging Face text towers, wrappers), an attention mask that is not the causal one (or none), pooling that
needs every position (``'last'``) or is unknown, and tokens whose length differs from the positional
embedding.
"""
from __future__ import annotations

import torch
from torch import nn

#: Pool types whose pooled output depends only on positions up to :func:`pooled_positions`.
TRUNCATABLE_POOL_TYPES = ("argmax", "eos", "first")


def _causal_mask(n: int, like: torch.Tensor) -> torch.Tensor:
    """open_clip's additive causal mask [n, n]: 0 on and below the diagonal, -inf above."""
    return torch.full((n, n), float("-inf"), dtype=like.dtype, device=like.device).triu_(1)


def truncation_unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model``'s text tower cannot be truncated after the pooled token, or ``None`` if it can."""
    try:
        from open_clip.model import CLIP
    except ImportError:  # pragma: no cover - open_clip is a dependency
        return "open_clip is not installed"
    if not isinstance(model, CLIP) or type(model).encode_text is not CLIP.encode_text or "encode_text" in vars(model):
        return f"{type(model).__name__} is not open_clip's plain CLIP text tower (its encode_text is not CLIP's)"
    pool_type = getattr(model, "text_pool_type", None)
    if pool_type not in TRUNCATABLE_POOL_TYPES:
        return f"text pool type {pool_type!r} needs every token position"
    if pool_type == "eos" and getattr(model, "text_eos_id", None) is None:
        return "text pool type 'eos' without an eos token id"
    mask = getattr(model, "attn_mask", None)
    positional = getattr(model, "positional_embedding", None)
    if not isinstance(mask, torch.Tensor) or not isinstance(positional, torch.Tensor):
        return "the text tower has no causal attention mask"
    n = positional.shape[0]
    if mask.shape != (n, n) or not mask.is_floating_point() or not torch.equal(mask, _causal_mask(n, mask)):
        return "the text attention mask is not open_clip's causal mask"
    return None


def pooled_positions(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """LongTensor [B]: the token position each prompt's pooled output is read from (as ``text_global_pool``).

    Only meaningful for models where :func:`truncation_unsupported_reason` is ``None``.
    """
    pool_type = model.text_pool_type
    if pool_type == "argmax":  # the EOT token has the largest id (OpenAI tokenizer)
        return tokens.argmax(dim=-1)
    if pool_type == "eos":
        return (tokens == model.text_eos_id).int().argmax(dim=-1)
    if pool_type == "first":
        return torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
    raise ValueError(f"pool type {pool_type!r} has no pooled position")


def token_budget_batches(lengths: torch.Tensor, max_tokens: int, index: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Split prompts sorted by non-decreasing ``lengths`` into consecutive batches of at most ``max_tokens``
    padded tokens (batch size x its longest length; a prompt longer than ``max_tokens`` gets a batch of its
    own). Returns, per batch, the matching entries of ``index`` (default: positions in ``lengths``)."""
    lengths = lengths.tolist()
    index = torch.arange(len(lengths)) if index is None else index
    if any(b < a for a, b in zip(lengths, lengths[1:])):
        raise ValueError("lengths must be sorted in non-decreasing order")
    batches, start = [], 0
    while start < len(lengths):
        end = start + 1
        while end < len(lengths) and (end + 1 - start) * lengths[end] <= max_tokens:
            end += 1
        batches.append(index[start:end])
        start = end
    return batches


def truncated_encode_text(model: nn.Module, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``CLIP.encode_text(tokens)`` run on the first ``positions.max() + 1`` token positions only.

    ``positions`` must be :func:`pooled_positions` of ``tokens`` and the model one for which
    :func:`truncation_unsupported_reason` is ``None``.
    """
    length = int(positions.max()) + 1
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens[:, :length]).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), positions.to(x.device)]
    projection = model.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
    return x


def encode_tokens(model: nn.Module, tokens: torch.Tensor, truncate: bool = True) -> torch.Tensor:
    """``model.encode_text(tokens)`` (unnormalised [B, d]), computed only up to the batch's last pooled token.

    Equal to ``model.encode_text(tokens)`` up to floating-point summation order (the computed positions
    see exactly the same inputs). Falls back to ``model.encode_text`` when ``truncate`` is false or
    :func:`truncation_unsupported_reason` gives a reason.
    """
    if (not truncate or tokens.ndim != 2 or truncation_unsupported_reason(model) is not None
            or tokens.shape[1] != model.positional_embedding.shape[0]):
        return model.encode_text(tokens)
    return truncated_encode_text(model, tokens, pooled_positions(model, tokens))
