"""proxyclip_pl: ProxyCLIP open-vocabulary semantic segmentation, exact and batched.

The method is plain PyTorch (:class:`ProxyCLIP`); Lightning only wraps it for distributed evaluation.
"""
__version__ = "0.1.0"

from .factory import CLIP_MODELS, VFM_MODELS, WeightsNotFoundError, build_clip, build_proxyclip, build_vfm
from .model import ATTENTIONS, ProxyCLIP
from .vocabulary import flatten_vocabulary, load_vocabulary, parse_vocabulary

__all__ = [
    "ATTENTIONS",
    "CLIP_MODELS",
    "VFM_MODELS",
    "ProxyCLIP",
    "WeightsNotFoundError",
    "build_clip",
    "build_proxyclip",
    "build_vfm",
    "flatten_vocabulary",
    "load_vocabulary",
    "parse_vocabulary",
]
