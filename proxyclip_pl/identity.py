"""What identifies a segmenter: its weights (the resume fingerprint of a plug-in), its encoder configuration (which
segmenters one encoder pass can serve) and its constructor's default geometry (an image of no benchmark)."""
from __future__ import annotations

import hashlib
import inspect
import itertools
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .segmenter import Segmenter

#: Attributes that never change the window embeddings: the vocabulary, the text side, post-processing, the test
#: resize and bookkeeping (the window geometry enters the configuration separately).
NOT_ENCODER = frozenset({"training", "windows_encoded", "vocabulary", "queries", "logit_scale", "prob_thd",
                         "area_thd", "pamr_steps", "short_side", "long_side_cap", "slide_crop", "slide_stride",
                         "window_batch_size"})
TEXT_BUFFERS = ("text_embeddings", "query_to_class")


def _hashable(value: Any) -> Any:
    """A hashable stand-in compared by content: tensors by dtype, shape and a digest of their bytes."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        digest = hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy()).hexdigest()
        return ("tensor", str(t.dtype), tuple(t.shape), digest)
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _hashable(v)) for k, v in value.items()))
    try:
        hash(value)
        return value
    except TypeError:
        return repr(value)


def encoder_config(model: "Segmenter") -> tuple:
    """See :meth:`Segmenter.encoder_config`. A class that declares ``encoder_settings`` is compared on those; one that
    does not (``None``, e.g. a plug-in) on every public attribute outside :data:`NOT_ENCODER` and every buffer
    besides the text side, so an undeclared setting can never let two different encoders share a pass."""
    names = model.encoder_settings
    if names is None:
        names = sorted(k for k in vars(model) if not k.startswith("_") and k not in NOT_ENCODER)
        buffers = tuple((n, _hashable(b)) for n, b in model._buffers.items()
                        if n not in TEXT_BUFFERS and b is not None)
    else:
        buffers = ()
    return (type(model), tuple((name, id(module)) for name, module in model._modules.items()), model.pad_multiple,
            tuple(model.mean), tuple(model.std), model.effective_window_batch_size, model.slide_crop, model.slide_stride,
            tuple((name, _hashable(getattr(model, name))) for name in names), buffers)


def state_fingerprint(model: torch.nn.Module) -> str:
    """See :meth:`Segmenter.state_fingerprint`: the class and every parameter and buffer but the text side."""
    digest = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        if name in TEXT_BUFFERS:
            continue
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def default_geometry(cls: type) -> dict[str, int]:
    """See :meth:`Segmenter.default_geometry`: the nearest constructor defaults of the short side and windows."""
    found: dict[str, int] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for name, param in inspect.signature(init).parameters.items():
            if name in ("short_side", "slide_crop", "slide_stride") and param.default is not param.empty:
                found.setdefault(name, int(param.default))
    return found
