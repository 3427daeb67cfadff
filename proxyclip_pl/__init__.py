"""proxyclip_pl: ProxyCLIP open-vocabulary semantic segmentation, exact and batched.

The methods are plain PyTorch (:class:`ProxyCLIP`, :class:`MaskCLIP`, :class:`CLIP`, :class:`SCLIP`,
:class:`NACLIP`, :class:`ClearCLIP`, all :class:`Segmenter` subclasses); Lightning only wraps it for distributed evaluation.
"""
__version__ = "0.1.0"

from .factory import (
    CLIP_MODELS,
    VFM_MODELS,
    WeightsNotFoundError,
    build_clip,
    build_proxyclip,
    build_segmenter,
    build_vfm,
)
from .methods import NACLIP, SCLIP, ClearCLIP
from .model import ATTENTIONS, CLIP, MaskCLIP, ProxyCLIP
from .native_protocols import NATIVE_PROTOCOLS, PROXYCLIP_PROTOCOLS, Protocol, protocol_for
from .segmenter import Segmenter, protocol_kwargs
from .vocabulary import flatten_vocabulary, load_vocabulary, parse_vocabulary

__all__ = [
    "ATTENTIONS",
    "CLIP",
    "CLIP_MODELS",
    "NACLIP",
    "NATIVE_PROTOCOLS",
    "PROXYCLIP_PROTOCOLS",
    "SCLIP",
    "VFM_MODELS",
    "ClearCLIP",
    "MaskCLIP",
    "Protocol",
    "ProxyCLIP",
    "Segmenter",
    "WeightsNotFoundError",
    "build_clip",
    "build_proxyclip",
    "build_segmenter",
    "build_vfm",
    "flatten_vocabulary",
    "load_vocabulary",
    "parse_vocabulary",
    "protocol_for",
    "protocol_kwargs",
]
