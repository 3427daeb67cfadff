"""proxyclip_pl: ProxyCLIP open-vocabulary semantic segmentation, exact and batched.

The methods are plain PyTorch (:class:`ProxyCLIP`, :class:`MaskCLIP`, :class:`CLIP`, :class:`SCLIP`,
:class:`NACLIP`, :class:`ClearCLIP`, :class:`Trident`, :class:`CorrCLIP`, all :class:`Segmenter` subclasses); Lightning only wraps it for distributed evaluation.
"""
__version__ = "0.1.0"

from typing import TYPE_CHECKING

from datamodules.lazy import lazy_attributes

# Names are imported on first use, so that ``proxyclip_pl.cli`` and the light commands (proxyclip-prepare)
# start without importing torch, open_clip and timm.
_SUBMODULE_OF = {
    "CLIP_MODELS": "towers", "VFM_MODELS": "towers", "WeightsNotFoundError": "weights", "build_clip": "towers",
    "build_proxyclip": "factory", "build_segmenter": "factory", "build_segmenters": "factory", "build_vfm": "towers",
    "NACLIP": "methods", "SCLIP": "methods", "ClearCLIP": "methods",
    "ATTENTIONS": "model", "CLIP": "model", "MaskCLIP": "model", "ProxyCLIP": "model",
    "NATIVE_PROTOCOLS": "native_protocols", "PROXYCLIP_PROTOCOLS": "native_protocols", "Protocol": "native_protocols",
    "protocol_for": "native_protocols",
    "Segmenter": "segmenter", "protocol_kwargs": "segmenter", "shared_slide_logits": "shared_pass",
    "shares_encoder": "shared_pass",
    "Trident": "trident", "CorrCLIP": "corrclip", "instance_map_from_masks": "region_masks",
    "InstanceMaskFolder": "region_masks", "SAM2MaskProvider": "region_masks",
    "flatten_vocabulary": "vocabulary", "load_vocabulary": "vocabulary", "parse_vocabulary": "vocabulary",
    "MethodSpec": "registry", "register_method": "registry", "evaluate": "api",
}
__getattr__, __dir__ = lazy_attributes(__name__, _SUBMODULE_OF)


if TYPE_CHECKING:  # pragma: no cover
    from .factory import build_proxyclip, build_segmenter, build_segmenters
    from .towers import CLIP_MODELS, VFM_MODELS, build_clip, build_vfm
    from .weights import WeightsNotFoundError
    from .methods import NACLIP, SCLIP, ClearCLIP
    from .trident import Trident
    from .corrclip import CorrCLIP
    from .region_masks import InstanceMaskFolder, SAM2MaskProvider, instance_map_from_masks
    from .model import ATTENTIONS, CLIP, MaskCLIP, ProxyCLIP
    from .native_protocols import NATIVE_PROTOCOLS, PROXYCLIP_PROTOCOLS, Protocol, protocol_for
    from .segmenter import Segmenter, protocol_kwargs
    from .shared_pass import shared_slide_logits, shares_encoder
    from .api import evaluate
    from .registry import MethodSpec, register_method
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
    "CorrCLIP",
    "InstanceMaskFolder",
    "SAM2MaskProvider",
    "Trident",
    "instance_map_from_masks",
    "MaskCLIP",
    "MethodSpec",
    "Protocol",
    "ProxyCLIP",
    "Segmenter",
    "WeightsNotFoundError",
    "build_clip",
    "build_proxyclip",
    "build_segmenter",
    "build_segmenters",
    "build_vfm",
    "evaluate",
    "flatten_vocabulary",
    "load_vocabulary",
    "parse_vocabulary",
    "protocol_for",
    "protocol_kwargs",
    "register_method",
    "shared_slide_logits",
    "shares_encoder",
]
