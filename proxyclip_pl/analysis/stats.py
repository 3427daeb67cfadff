"""Similarity statistics before / after ProxyCLIP's normalisation (paper Fig. 4; contract rule 7), streaming.

Per VFM, over all L^2 entries (diagonal included) of every image's cosine-similarity matrix S ("before") and of
``A = gamma * (S - beta * mean(S))`` with the mean over that image's L^2 entries ("after": Eq. 6 before the mask):
count, mean, population std, min, max, the quantiles 5/25/50/75/95 % and, after, the share of ``A >= 0`` (the keys
the mask keeps).

States (a torchmetrics ``Metric``; every one reduced across processes by sum, min or max, memory independent of the
number of images): counts (int64), sums and sums of squares (float64, per image then added), min / max, and a
``2^16``-bin histogram on a fixed range that holds every possible value: ``[-1, 1]`` (cosines) and
``gamma (1 + beta) [-1, 1]`` (``|S - beta mu| <= 1 + beta``), widened by 0.1 % for rounding (values outside are
clamped into the edge bins; min / max stay exact). A quantile is read from the histogram (the rank's bin,
interpolated within it as numpy's ``linear`` quantile interpolates between ranks, clamped to [min, max]): its error
is at most one bin width, 3.1e-5 before and ``3.1e-5 gamma (1 + beta)`` after (2.0e-4 at the defaults; 2^16
bins), far inside the contract's 0.005 (before) and ``0.005 gamma`` (after).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

QUANTILES = {"q05": 0.05, "q25": 0.25, "median": 0.5, "q75": 0.75, "q95": 0.95}
#: rounding margin of the histogram ranges
_MARGIN = 1e-3


class SimilarityStats(Metric):
    """Streaming statistics of one VFM's similarity matrices (see the module docstring).

    Args:
        beta, gamma: ProxyCLIP's shift and scale (> 0).
        num_bins: histogram bins per side (before / after).
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, beta: float = 1.2, gamma: float = 3.0, num_bins: int = 2 ** 16, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not (beta > 0 and gamma > 0):
            raise ValueError(f"beta and gamma must be positive, got {beta}, {gamma}")
        self.beta, self.gamma, self.num_bins = float(beta), float(gamma), int(num_bins)
        self.ranges = {"before": 1.0 + _MARGIN, "after": self.gamma * (1.0 + self.beta) * (1.0 + _MARGIN)}
        for side in ("before", "after"):
            self.add_state(f"{side}_count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
            self.add_state(f"{side}_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_sumsq", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_min", torch.tensor(math.inf, dtype=torch.float64), dist_reduce_fx="min")
            self.add_state(f"{side}_max", torch.tensor(-math.inf, dtype=torch.float64), dist_reduce_fx="max")
            self.add_state(f"{side}_hist", torch.zeros(self.num_bins, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("after_nonnegative", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def _add(self, side: str, values: Tensor) -> None:
        """Accumulate float64 values [N] into one side's states."""
        bound = self.ranges[side]
        setattr(self, f"{side}_count", getattr(self, f"{side}_count") + values.numel())
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + values.sum())
        setattr(self, f"{side}_sumsq", getattr(self, f"{side}_sumsq") + values.square().sum())
        setattr(self, f"{side}_min", torch.minimum(getattr(self, f"{side}_min"), values.min()))
        setattr(self, f"{side}_max", torch.maximum(getattr(self, f"{side}_max"), values.max()))
        bins = ((values + bound) * (self.num_bins / (2 * bound))).floor_().clamp_(0, self.num_bins - 1).long()
        getattr(self, f"{side}_hist").add_(torch.bincount(bins, minlength=self.num_bins))

    @torch.no_grad()
    def update(self, similarity: Tensor) -> None:
        """Add the similarity matrices of a batch of images.

        Args:
            similarity: [B, L, L] cosine similarities (one matrix per image), values in [-1, 1].
        """
        if similarity.dim() != 3 or similarity.shape[-1] != similarity.shape[-2]:
            raise ValueError(f"SimilarityStats.update: expected [B, L, L], got {tuple(similarity.shape)}")
        for s in similarity:
            s = s.reshape(-1).to(torch.float64)
            self._add("before", s)
            after = (s - self.beta * s.mean()).mul_(self.gamma)
            self.after_nonnegative += (after >= 0).sum()
            self._add("after", after)

    def _side(self, side: str) -> dict[str, float]:
        count = int(getattr(self, f"{side}_count"))
        lo, hi = float(getattr(self, f"{side}_min")), float(getattr(self, f"{side}_max"))
        mean = float(getattr(self, f"{side}_sum")) / count
        var = max(float(getattr(self, f"{side}_sumsq")) / count - mean * mean, 0.0)
        hist = getattr(self, f"{side}_hist").cpu().numpy()
        bound = self.ranges[side]
        out = {"mean": mean, "std": math.sqrt(var), "min": lo, "max": hi}
        for name, q in QUANTILES.items():
            out[name] = histogram_quantile(hist, -bound, bound, q, lo, hi)
        return out

    def compute(self) -> dict[str, Any]:
        """``{"num_entries", "beta", "gamma", "before": {...}, "after": {..., "frac_nonnegative"}}`` (rule 7; NaN
        statistics without data) plus ``"histograms"``: ``{"before", "after": (counts [num_bins], (low, high))}``
        for the figure (pop it before writing JSON)."""
        count = int(self.before_count)
        result: dict[str, Any] = {"num_entries": count, "beta": self.beta, "gamma": self.gamma}
        if count == 0:
            nan = {k: math.nan for k in ("mean", "std", "min", "max", *QUANTILES)}
            result.update(before=dict(nan), after={**nan, "frac_nonnegative": math.nan})
        else:
            result["before"] = self._side("before")
            result["after"] = {**self._side("after"), "frac_nonnegative": int(self.after_nonnegative) / count}
        result["histograms"] = {side: (getattr(self, f"{side}_hist").cpu().numpy(),
                                       (-self.ranges[side], self.ranges[side])) for side in ("before", "after")}
        return result


def histogram_quantile(hist: np.ndarray, low: float, high: float, q: float, vmin: float, vmax: float) -> float:
    """numpy's ``linear`` quantile of the values a histogram counts, within one bin width.

    Args:
        hist: int [nb] counts of equal bins on [low, high).
        q: in [0, 1].
        vmin, vmax: the exact extremes (the estimate is clamped to them).
    Returns:
        the interpolated value at rank ``q (N - 1)``: each rank's value is taken uniformly spread within its bin.
    """
    cum = np.cumsum(hist)
    total = int(cum[-1])
    width = (high - low) / len(hist)
    position = q * (total - 1)
    below = math.floor(position)

    def value_at(rank: int) -> float:
        b = int(np.searchsorted(cum, rank, side="right"))  # first bin whose cumulative count exceeds rank
        before = int(cum[b - 1]) if b > 0 else 0
        x = low + width * (b + (rank - before + 0.5) / int(hist[b]))
        return min(max(x, vmin), vmax)

    lower = value_at(below)
    if below + 1 >= total:
        return lower
    return lower + (position - below) * (value_at(below + 1) - lower)
