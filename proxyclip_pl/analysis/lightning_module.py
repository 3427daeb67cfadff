"""Lightning shell of the distributed analyses (``coherence``, ``similarity-stats``).

Like :class:`proxyclip_pl.evaluation.BenchmarkEvaluator`: each process scores its shard of the test images (the
datamodule's non-padding sampler gives every image to exactly one process) into statistics whose memory does not
depend on the number of images; at the end of the epoch every process joins the reductions once, a ``seen`` count
checks that every image was scored exactly once, and global rank 0 writes the output files (the only way results
reach the caller under every launcher, ``ddp_spawn`` included).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch import nn

from .binned_pr import BinnedPR
from .labels import kept_pair_targets, patch_labels
from .scores import ATTENTION_PAIRS, analysis_input, clip_attention_scores_with_grid, vfm_similarities
from .stats import SimilarityStats

TASKS = ("coherence", "similarity-stats")
CLIP_SCORERS = tuple(f"clip_{ab}" for ab in ATTENTION_PAIRS)


class AnalysisModule(pl.LightningModule):
    """Coherence AP (rules 4-6) or similarity statistics (rule 7) over a benchmark's test images.

    Args:
        task: ``coherence`` or ``similarity-stats``.
        clip_model: open_clip CLIP (its vision tower is used); coherence only (``None``: VFM scorers only).
        vfms: ``(scorer name, model, kind)`` per VFM, e.g. ``("vfm:tiny_dino", model, "dino")``.
        image_size: S (rule 1).
        num_samples: images in the analysed dataset; each index must be scored exactly once.
        output_dir: where global rank 0 writes the outputs (:mod:`proxyclip_pl.analysis.outputs`).
        ignore_index: the benchmark's ignore value (dropped cells).
        num_classes: if given, cells whose majority label lies outside ``[0, num_classes)`` (e.g. ADE-847's 65535
            "unlabelled") are dropped too.
        beta, gamma: similarity-stats' ProxyCLIP shift and scale.
        num_bins: :class:`~proxyclip_pl.analysis.binned_pr.BinnedPR` bins.
        pair_chunk: row blocks of the pair matrices are binned this many pairs at a time (temporary memory).
    """

    def __init__(self, task: str, clip_model: nn.Module | None, vfms: Sequence[tuple[str, nn.Module, str]],
                 image_size: int, num_samples: int, output_dir: str | Path, ignore_index: int = 255,
                 num_classes: int | None = None, beta: float = 1.2, gamma: float = 3.0, num_bins: int = 2 ** 16,
                 pair_chunk: int = 1 << 22) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"unknown analysis task {task!r}; expected one of {', '.join(TASKS)}")
        if task == "similarity-stats" and not vfms:
            raise ValueError("similarity-stats needs at least one VFM")
        self.task = task
        self.clip = clip_model.eval().requires_grad_(False) if clip_model is not None and task == "coherence" else None
        self.vfms = nn.ModuleList([m.eval().requires_grad_(False) for _, m, _ in vfms])
        self.vfm_names = [name for name, _, _ in vfms]
        self.vfm_kinds = [kind for _, _, kind in vfms]
        self.image_size, self.num_samples = int(image_size), int(num_samples)
        self.output_dir = Path(output_dir)
        self.ignore_index, self.num_classes = int(ignore_index), num_classes
        self.beta, self.gamma, self.pair_chunk = float(beta), float(gamma), int(pair_chunk)
        self.pr: dict[str, BinnedPR] = {}
        if task == "coherence":
            names = (list(CLIP_SCORERS) if self.clip is not None else []) + self.vfm_names
            self.pr = {name: BinnedPR(num_bins, "log" if name in CLIP_SCORERS else "identity") for name in names}
        self.stats = nn.ModuleList([SimilarityStats(beta, gamma) for _ in vfms] if task == "similarity-stats" else [])
        self._seen: torch.Tensor | None = None

    # ------------------------------------------------------------------------------------------ epoch
    def on_test_epoch_start(self) -> None:
        # ddp_spawn pickles the module into each worker; private, fresh states in every process.
        for pr in self.pr.values():
            pr.reset()
        for stats in self.stats:
            stats.reset()
        self._seen = torch.zeros(self.num_samples, dtype=torch.int64, device=self.device)

    def test_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        for sample in batch:
            x = analysis_input(sample["image"].to(self.device), self.image_size)
            self._seen[int(sample["index"])] += 1
            if self.task == "coherence":
                self.score_pairs(x, sample["label"].to(self.device))
            else:
                for vfm, kind, stats in zip(self.vfms, self.vfm_kinds, self.stats):
                    stats.update(vfm_similarities(vfm, kind, x)[0])

    @torch.no_grad()
    def score_pairs(self, x: torch.Tensor, label: torch.Tensor) -> None:
        """Add one image's pairs to every scorer.

        Args:
            x: [1, 3, S, S] analysis input (RGB in [0, 1]).
            label: [H0, W0] its label map at the original size.
        """
        on_grid: dict[tuple[int, int], torch.Tensor] = {}  # scorers on the same grid share their patch labels

        def labels_on(grid: tuple[int, int]) -> torch.Tensor:
            key = (int(grid[0]), int(grid[1]))
            if key not in on_grid:
                on_grid[key] = self.cell_labels(label, key)
            return on_grid[key]

        if self.clip is not None:
            scores, grid = clip_attention_scores_with_grid(self.clip, x)
            for ab in ATTENTION_PAIRS:
                self.add_pairs(f"clip_{ab}", scores[ab][0].mean(0), labels_on(grid))  # mean over heads
        for name, vfm, kind in zip(self.vfm_names, self.vfms, self.vfm_kinds):
            similarity, grid = vfm_similarities(vfm, kind, x)
            self.add_pairs(name, similarity[0], labels_on(grid))

    def cell_labels(self, label: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Rule 4 on a scorer's grid, cells outside ``[0, num_classes)`` dropped as well: LongTensor [gh * gw]."""
        labels = patch_labels(label, grid, self.ignore_index)
        if self.num_classes is not None:
            labels = labels.masked_fill((labels < 0) | (labels >= self.num_classes), self.ignore_index)
        return labels

    def add_pairs(self, name: str, scores: torch.Tensor, labels: torch.Tensor) -> None:
        """Rule 5: all ordered pairs i != j of kept patches of one image, into scorer ``name``.

        Args:
            scores: float [L, L] (row i: patch i's scores of every patch j).
            labels: LongTensor [L] from :meth:`cell_labels`.
        """
        if scores.shape[0] != labels.numel():
            raise RuntimeError(f"{name}: {scores.shape[0]} patches but {labels.numel()} patch labels")
        kept, targets = kept_pair_targets(labels, self.ignore_index)
        k = kept.numel()
        if k < 2:
            return
        rows = max(1, self.pair_chunk // k)
        for start in range(0, k, rows):  # row blocks: the pair tensors stay small whatever L is
            block = kept[start:start + rows]
            sub = scores[block][:, kept]
            tgt = targets[start:start + rows]
            keep = torch.ones_like(tgt)
            keep[torch.arange(block.numel(), device=keep.device), torch.arange(start, start + block.numel(),
                                                                               device=keep.device)] = False
            self.pr[name].update(sub[keep], tgt[keep])

    def on_test_epoch_end(self) -> None:
        self._check_seen()
        if self.task == "coherence":
            for pr in self.pr.values():
                pr.sync(self.device)
            results = {name: pr.compute() for name, pr in self.pr.items()}
        else:
            results = {name: stats.compute() for name, stats in zip(self.vfm_names, self.stats)}
        if self.trainer.is_global_zero:
            from .outputs import write_coherence, write_similarity_stats

            self.output_dir.mkdir(parents=True, exist_ok=True)
            write = write_coherence if self.task == "coherence" else write_similarity_stats
            write(self.output_dir, results)

    def _check_seen(self) -> None:
        seen = self._seen
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(seen, op=dist.ReduceOp.SUM)
        bad = torch.nonzero(seen != 1).flatten().tolist()
        if bad:
            raise RuntimeError(f"analysis: {len(bad)} image(s) not scored exactly once (indices {bad[:10]}); "
                               "every image must reach exactly one process")
