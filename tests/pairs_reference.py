"""The exact, non-streaming pairs of the coherence analysis (rule 5 of the analyses contract), for small grids."""
from __future__ import annotations

import torch

from proxyclip_pl.analysis.labels import kept_pair_targets


def pairs_of(scores: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered pairs (i != j) of the kept patches of one image at once: scores [K (K - 1)] and bool targets."""
    kept, targets = kept_pair_targets(labels, ignore_index)
    return off_diagonal(scores[kept][:, kept].contiguous()), off_diagonal(targets.contiguous())


def off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    """The K * (K - 1) off-diagonal entries of a [K, K] matrix (row-major), i.e. all ordered pairs i != j."""
    k = matrix.shape[-1]
    if k < 2:
        return matrix.reshape(-1)[:0]
    # drop the first element and view the rest as [K - 1, K + 1]: its last column is the rest of the diagonal
    return matrix.reshape(-1)[1:].reshape(k - 1, k + 1)[:, :-1].reshape(-1)
