"""The paper's Section 3.1 analyses (``proxyclip-analyze``; docs/analyses.md): how semantically coherent CLIP's
last-layer attention is compared with VFM feature similarities.

* :func:`patch_labels`: majority-vote patch labels of a segmentation map on a patch grid (rule 4).
* :func:`clip_attention_scores`: CLIP's last-block ``qk`` / ``qq`` / ``kk`` / ``vv`` attention per head (rule 2).
* :func:`vfm_similarities`: a VFM's patch cosine similarities (rule 3).
* :class:`BinnedPR`: streaming, mergeable PR / AP of scored pairs with a certified error (rule 6).
* :mod:`.stats`: streaming similarity statistics before / after ProxyCLIP's normalisation (rule 7).
* :mod:`.lightning_module`: the distributed Lightning shell; :mod:`.outputs` / :mod:`.plots`: files and figures.
"""
from .binned_pr import BinnedPR, BinnedPRResult, exact_average_precision
from .labels import patch_labels
from .scores import analysis_input, clip_attention_scores, seed_patch, vfm_similarities

__all__ = ["patch_labels", "clip_attention_scores", "vfm_similarities", "analysis_input", "seed_patch", "BinnedPR",
           "BinnedPRResult", "exact_average_precision"]
