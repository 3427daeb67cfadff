"""The exact, non-streaming pairs of the coherence analysis (rule 5 of the analyses contract), for small grids."""
from __future__ import annotations

import torch

from proxyclip_pl.analysis.labels import kept_pair_targets, off_diagonal


def pairs_of(scores: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered pairs (i != j) of the kept patches of one image at once: scores [K (K - 1)] and bool targets."""
    kept, targets = kept_pair_targets(labels, ignore_index)
    return off_diagonal(scores[kept][:, kept].contiguous()), off_diagonal(targets.contiguous())
