"""The segmenter core shared by every method (ProxyCLIP, the CLIP baselines, SCLIP, NACLIP, ClearCLIP, yours).

A method supplies only its dense window embeddings, :meth:`Segmenter.dense_embeddings`
(``windows [B, 3, h, w] in [0, 1] -> ([B, N, d], grid)``), plus, where it differs, three class attributes:

* ``mean`` / ``std``: input normalisation (RGB, [0, 1] units);
* ``pad_multiple``: windows are padded (with the mean colour, i.e. zero after normalisation, split
  symmetrically) to a multiple of it before encoding, and the logits are cropped back (1 = no padding);
* :meth:`Segmenter.tokens`: the stem and the blocks before the last one (the positional-embedding rule).

Everything else lives here once: prompt-ensembled text embeddings (one row per synonym), cosine logits,
the sliding window (or the whole image when ``slide_crop == 0``), upsampling to the original size, PAMR
(``pamr_steps``), post-processing (softmax of ``logit_scale`` x logits, max over synonyms, SCLIP's optional
``area_thd`` filter, argmax, ``prob_thd``), :meth:`Segmenter.segment_resized` and :meth:`Segmenter.predict`.

Order at the original size (SCLIP ``forward_slide`` / NACLIP ``predict``): averaged raw cosine logits ->
bilinear to (H0, W0) -> PAMR guided by the normalised image resized bilinearly to (H0, W0) -> post-processing.

Whole-image methods (Trident's SAM affinity over the whole image, CorrCLIP's region masks) use two more hooks
(docs/methods.md, 'Whole-image hooks'): :meth:`Segmenter.image_inputs` (per-image inputs computed from the
original image and its sample id, when :attr:`Segmenter.uses_original_image` is set) and
:meth:`Segmenter.image_logits` (from the resized image and those inputs to the averaged logits). Every entry
point (``slide_logits``, ``segment_resized``, ``postprocess``, ``predict``, shared passes) forwards the inputs.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from datamodules.io import array_to_rgb_uint8 as to_rgb_uint8
from datamodules.resize import resize_short_side

from .clip_encoder import CLIP_MEAN, CLIP_STD, check_clip_visual, tokens_before_last_block
from .correlative_attention import sclip_labels
from .identity import default_geometry, encoder_config, state_fingerprint
from .native_protocols import Protocol
from .pamr import PAMR_DILATIONS, pamr
from .postprocess import logits_to_labels
from .precision import autocast_off
from .sliding_window import pad_with_colour, sliding_window_logits, symmetric_padding, upsample_and_crop
from .vfm import standardize
from .vocabulary import encode_text_embeddings, flatten_vocabulary


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def require_one_image(image: torch.Tensor) -> None:
    """``ValueError`` unless ``image`` is one RGB image [1, 3, H, W]."""
    _require(image.dim() == 4 and image.shape[:2] == (1, 3), f"expected one image [1, 3, H, W], got {tuple(image.shape)}")


class Segmenter(nn.Module):
    """Training-free open-vocabulary segmenter around an open_clip CLIP (subclass and implement
    :meth:`dense_embeddings`).

    Args:
        clip_model: an ``open_clip.CLIP`` with a ViT vision tower.
        vocabulary: one entry per class (label order), each a list of synonyms.
        logit_scale: multiplies the cosine logits before the softmax over queries.
        prob_thd: pixels whose best class probability is below it become class 0.
        slide_crop, slide_stride: window side and step (the official config keys, see
            :class:`~proxyclip_pl.native_protocols.Protocol`); ``slide_crop=0`` encodes the whole resized
            image in one forward (no windows; the stride is then unused).
        short_side, long_side_cap: test resize of :meth:`predict` (short side to ``short_side``, long side
            at most ``long_side_cap``).
        tokenizer: open_clip tokenizer; defaults to open_clip's BPE tokenizer with the model's context.
        text_embeddings: precomputed [Q, d] embeddings (e.g. from a cache) instead of encoding prompts.
        area_thd: SCLIP's foreground-area filter (``None`` = off), see
            :func:`proxyclip_pl.correlative_attention.area_filter`.
        pamr_steps: PAMR iterations on the logits at the original size (0 = off).
        window_batch_size: windows per encoder call (memory bound; results do not depend on it). ``None``:
            8 on a GPU, 1 on the CPU.
    """

    #: method key (``scripts/test.py --method``, ``protocol_for``).
    method = "segmenter"
    #: input normalisation, RGB in [0, 1] units.
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    #: windows are padded to a multiple of this before encoding (1: none).
    pad_multiple: int = 1
    #: PAMR neighbour dilations.
    pamr_dilations: tuple[int, ...] = PAMR_DILATIONS
    #: attributes (beyond the window geometry) that change the window embeddings: part of :meth:`encoder_config`.
    #: ``None``: every public attribute but the text side and post-processing (the safe default for a plug-in).
    encoder_settings: tuple[str, ...] | None = None
    #: whether :meth:`image_inputs` needs the original image: the evaluator then reads it (and the sample id).
    uses_original_image: bool = False
    #: the method's own per-benchmark settings (:attr:`Protocol.options`), reported by :attr:`protocol`.
    protocol_options: tuple[str, ...] = ()
    #: those of :attr:`protocol_options` that describe the benchmark's files, not the inference (CorrCLIP's cached
    #: mask sub-folder): kept from the native row under every protocol.
    data_options: tuple[str, ...] = ()

    def __init__(
        self,
        clip_model: nn.Module,
        vocabulary: Sequence[Sequence[str]],
        *,
        logit_scale: float = 40.0,
        prob_thd: float = 0.0,
        slide_crop: int = 224,
        slide_stride: int = 112,
        short_side: int = 336,
        long_side_cap: int = 2048,
        tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
        text_embeddings: torch.Tensor | None = None,
        area_thd: float | None = None,
        pamr_steps: int = 0,
        window_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        _require(logit_scale > 0, f"logit_scale must be positive, got {logit_scale}")
        _require(0.0 <= prob_thd <= 1.0, f"prob_thd must lie in [0, 1], got {prob_thd}")
        _require(slide_crop >= 0, f"slide_crop must be >= 0 (0: whole image), got {slide_crop}")
        _require(slide_stride > 0, f"slide_stride must be positive, got {slide_stride}")
        _require(slide_crop == 0 or slide_stride <= slide_crop,
                 f"slide_stride ({slide_stride}) must not exceed slide_crop ({slide_crop})")
        _require(short_side > 0, f"short_side must be positive, got {short_side}")
        _require(long_side_cap > 0, f"long_side_cap must be positive, got {long_side_cap}")
        _require(area_thd is None or 0.0 <= area_thd <= 1.0, f"area_thd must be None or lie in [0, 1], got {area_thd}")
        _require(int(pamr_steps) == pamr_steps and pamr_steps >= 0, f"pamr_steps must be an int >= 0, got {pamr_steps}")
        _require(window_batch_size is None or window_batch_size >= 1, f"window_batch_size must be >= 1, got {window_batch_size}")
        visual = getattr(clip_model, "visual", None)
        _require(visual is not None, "clip_model must be an open_clip CLIP model with a .visual tower")
        check_clip_visual(visual)
        queries, query_to_class = flatten_vocabulary(vocabulary)

        self.clip = clip_model.eval().requires_grad_(False)
        self.vocabulary = [list(names) for names in vocabulary]
        self.queries = queries
        self.logit_scale, self.prob_thd = float(logit_scale), float(prob_thd)
        self.slide_crop, self.slide_stride, self.short_side = int(slide_crop), int(slide_stride), int(short_side)
        self.long_side_cap = int(long_side_cap)
        self.area_thd = None if area_thd is None else float(area_thd)
        self.pamr_steps = int(pamr_steps)
        self.window_batch_size = None if window_batch_size is None else int(window_batch_size)
        #: windows encoded by this segmenter's towers so far (a shared pass counts them on its first segmenter).
        self.windows_encoded = 0
        # Buffers start on the parameters' device (a model may be built from towers already on a GPU);
        # afterwards they move with every ``.to()``.
        device = next(self.clip.parameters()).device
        self.register_buffer("query_to_class", query_to_class.to(device), persistent=False)
        if text_embeddings is None:
            if tokenizer is None:
                tokenizer = open_clip.SimpleTokenizer(context_length=getattr(clip_model, "context_length", 77))
            text_embeddings = encode_text_embeddings(self.clip, tokenizer, queries)
        _require(
            text_embeddings.dim() == 2 and text_embeddings.shape[0] == len(queries),
            f"text_embeddings must be [Q={len(queries)}, d], got {tuple(text_embeddings.shape)}",
        )
        # Normalised in float64, then rounded: the unit rows are correctly rounded float32, so normalising them
        # again (a model rebuilt from another's embeddings) returns the same values.
        # (On the CPU: [Q, d] is small, and not every accelerator has float64.)
        source = text_embeddings.detach() if text_embeddings.is_meta else text_embeddings.detach().cpu()
        unit = F.normalize(source.double(), dim=-1).float().to(device)
        self.register_buffer("text_embeddings", unit, persistent=False)

    # ------------------------------------------------------------------------------------ settings
    @classmethod
    def default_geometry(cls) -> dict[str, int]:
        """The constructor's defaults for ``short_side``, ``slide_crop`` and ``slide_stride`` (the nearest class that
        states them): the method's own setting for an image that belongs to no benchmark."""
        return default_geometry(cls)

    @property
    def num_classes(self) -> int:
        return len(self.vocabulary)

    @property
    def device(self) -> torch.device:
        """The device of the CLIP weights: inputs go there (buffers follow every ``.to()``)."""
        return next(self.clip.parameters()).device

    @property
    def effective_window_batch_size(self) -> int:
        """``window_batch_size``, or its device default (8 on GPU, 1 on CPU) when it is ``None``."""
        return self.window_batch_size or (8 if self.device.type == "cuda" else 1)

    @property
    def protocol(self) -> Protocol:
        """The inference protocol this segmenter runs (validated)."""
        return Protocol(self.short_side, self.long_side_cap, self.slide_crop, self.slide_stride, self.logit_scale,
                        self.prob_thd, self.area_thd, self.pamr_steps,
                        tuple((name, getattr(self, name)) for name in self.protocol_options))

    def state_fingerprint(self) -> str:
        """Hex sha256 of the class and every parameter and buffer (the towers' weights) by name, dtype, shape and
        bytes. ``proxyclip-test --resume`` compares it for plug-in methods, so records of another model are never
        mixed in. The text embeddings are left out: their bits depend on the device that encoded them, and the
        resume fingerprint identifies them by the vocabulary's hash. Reads every weight once (about 1 s per GB)."""
        return state_fingerprint(self)

    @classmethod
    def from_towers(cls, towers: dict[str, Any], vocabulary: Sequence[Sequence[str]], **kwargs: Any) -> "Segmenter":
        """Construct from the registry's built towers (``{"clip": ..., "vfm": ...}``, the spec's order): the towers
        after CLIP are positional, before the vocabulary. A method whose constructor takes them otherwise (as
        keywords, a mask provider) overrides this."""
        return cls(*towers.values(), vocabulary, **kwargs)

    # ------------------------------------------------------------------------------------ hooks
    def image_inputs(self, original: np.ndarray, image_id: str | None = None, **given: Any) -> dict[str, Any]:
        """Per-image inputs of a whole-image method, computed once per image from the ORIGINAL image (read by the
        evaluator only when :attr:`uses_original_image` is set) and passed as keywords to :meth:`image_logits` and
        :meth:`postprocess`. ``given``: inputs the caller already has (e.g. CorrCLIP's ``masks``). Default: none."""
        return dict(given)

    def normalize_input(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, h, w] RGB in [0, 1] -> the tower's input (``(x - mean) / std``)."""
        return standardize(images, self.mean, self.std)

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Normalised windows -> tokens entering the last CLIP block [B, 1 + gh*gw, D] and the grid (gh, gw).

        Default: ProxyCLIP's positional rule (:func:`proxyclip_pl.clip_encoder.tokens_before_last_block`).
        """
        return tokens_before_last_block(self.clip.visual, x)

    def dense_embeddings(self, windows: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Per-token image embeddings of a batch of windows (the one method-specific part).

        Args:
            windows: [B, 3, h, w] RGB in [0, 1] (not normalised), on the model's device.
        Returns:
            [B, N, d] embeddings (not normalised) and their grid (H, W), N = H*W, rows from the height.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement dense_embeddings")

    # ----------------------------------------------------------------------------------- windows
    @torch.no_grad()
    def match(self, embeddings: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Window embeddings -> raw cosine logits against this segmenter's text embeddings.

        Args:
            embeddings: [B, N, d] from :meth:`dense_embeddings` (not normalised), N = H*W.
            grid: the feature grid (H, W).
        Returns:
            [B, Q, H, W] in [-1, 1] (the text embeddings' dtype, float32 by default).
        """
        with autocast_off(embeddings.device):
            embeddings = F.normalize(embeddings.to(self.text_embeddings.dtype), dim=-1)
            logits = (embeddings @ self.text_embeddings.T).transpose(1, 2)
            # contiguous: one memory layout, so the window upsampling is bitwise equal in shared and separate passes
            return logits.reshape(embeddings.shape[0], -1, *grid).contiguous()

    @torch.no_grad()
    def grid_logits(self, windows: torch.Tensor) -> torch.Tensor:
        """Raw cosine logits [B, Q, H, W] of a batch of windows on the feature grid (windows as in
        :meth:`dense_embeddings`; float32 by default, the text embeddings' dtype)."""
        if windows.dim() != 4 or windows.shape[1] != 3:
            raise ValueError(f"windows must be [B, 3, h, w], got {tuple(windows.shape)}")
        return self.match(*self.dense_embeddings(windows.to(self.device)))

    def encoder_config(self) -> tuple:
        """Everything :meth:`slide_logits` reads before the text embeddings, as one hashable value: the class, the
        towers (by identity), the input normalisation and padding, the windows, the windows per encoder call and
        the method's :attr:`encoder_settings`. Two segmenters with equal configurations produce the same window
        embeddings, so one encoder pass serves both (:func:`shared_slide_logits`); the vocabulary, the text side
        and the post-processing (logit scale, thresholds, PAMR, test resize) are not part of it."""
        return encoder_config(self)

    @torch.no_grad()
    def window_logits(self, windows: torch.Tensor) -> torch.Tensor:
        """Raw cosine logits of a batch of windows, as the method computes them for one window.

        Args:
            windows: [B, 3, h, w] RGB in [0, 1] (not normalised).
        Returns:
            [B, Q, h, w]: the windows padded to a multiple of ``pad_multiple`` (mean colour), encoded, the grid
            logits upsampled bilinearly (align_corners=False) to the padded size and cropped back.
        """
        windows = windows.to(self.device)
        pad = symmetric_padding(*windows.shape[-2:], self.pad_multiple)
        windows = pad_with_colour(windows, pad, self.mean)
        return upsample_and_crop(self.grid_logits(windows), windows.shape[-2:], pad)

    @torch.no_grad()
    def image_logits(self, image: torch.Tensor, match: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor],
                     num_queries: int, **inputs: Any) -> torch.Tensor:
        """The whole-image step: from the resized image to raw cosine logits, with the text side given as ``match``.

        Default: the sliding window (or the whole image when ``slide_crop == 0``) over :meth:`dense_embeddings`,
        each window's logits upsampled to the window and averaged. A whole-image method overrides it.

        Args:
            image: [1, 3, H, W] RGB in [0, 1], already resized, on the model's device.
            match: ([B, N, d] embeddings, grid (h, w)) -> [B, num_queries, h, w] raw cosine logits (one segmenter's
                :meth:`match`, or several segmenters' concatenated in a shared pass).
            num_queries: the number of rows ``match`` returns.
            inputs: :meth:`image_inputs` of the image.
        Returns:
            [1, num_queries, h, w] float32 logits on any grid (the post-processing upsamples them to the original
            size); the default's grid is (H, W).
        """
        def grid_logits(windows: torch.Tensor) -> torch.Tensor:
            embeddings, grid = self.dense_embeddings(windows.to(self.device))
            self.windows_encoded += windows.shape[0]
            return match(embeddings, grid)

        window_size, stride = self.slide_crop, self.slide_stride
        if window_size == 0:
            window_size = stride = max(image.shape[-2:])
        return sliding_window_logits(
            image, grid_logits, num_queries=num_queries, window_size=window_size, stride=stride,
            window_batch_size=self.effective_window_batch_size, pad_value=self.mean, pad_multiple=self.pad_multiple,
        )

    @torch.no_grad()
    def slide_logits(self, image: torch.Tensor, **inputs: Any) -> torch.Tensor:
        """Sliding-window logits averaged over windows (raw cosine, before any softmax); with
        ``slide_crop == 0`` the whole image is one window.

        Args:
            image: [1, 3, H, W] RGB in [0, 1], already resized to the test scale.
            inputs: :meth:`image_inputs` of the image (whole-image methods).
        Returns:
            [1, Q, H, W] float32 (a whole-image method may return another grid, see :meth:`image_logits`).
        """
        require_one_image(image)
        return self.image_logits(image.to(self.device), self.match, len(self.queries), **inputs)

    # ------------------------------------------------------------------------------------ images
    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """uint8 HxWx3 RGB (or gray/RGBA/16-bit) at original size -> [1, 3, h, w] in [0, 1], resized."""
        resized = resize_short_side(to_rgb_uint8(image), self.short_side, self.long_side_cap)
        return torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)[None].to(self.device).float() / 255.0

    @torch.no_grad()
    def refine(self, logits: torch.Tensor, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Logits at the original size, PAMR applied when ``pamr_steps > 0``.

        Args:
            logits: [1, Q, h, w] averaged raw cosine logits of the resized image.
            image: [1, 3, h, w] the resized image, RGB in [0, 1] (the PAMR guide, after normalisation).
            size: original (H0, W0).
        Returns:
            [1, Q, H0, W0].
        """
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
        if self.pamr_steps > 0:
            guide = F.interpolate(self.normalize_input(image.to(logits.device).to(logits.dtype)), size=tuple(size),
                                  mode="bilinear", align_corners=False)
            logits = pamr(guide, logits, self.pamr_steps, self.pamr_dilations)
        return logits

    @torch.no_grad()
    def postprocess(self, logits: torch.Tensor, image: torch.Tensor, size: tuple[int, int], prob_thd: float,
                    **inputs: Any) -> torch.Tensor:
        """Averaged logits [1, Q, h, w] of the resized ``image`` -> LongTensor [H0, W0] label map (``inputs``: the
        image's :meth:`image_inputs`, unused here)."""
        size = tuple(int(s) for s in size)
        if self.pamr_steps == 0 and self.area_thd is None:
            # chunked upsampling + best query: never holds Q x H0 x W0 (ProxyCLIP's path, unchanged)
            return logits_to_labels(logits[0], self.query_to_class, self.logit_scale, prob_thd, size=size)
        with autocast_off(logits.device):
            full = self.refine(logits.float(), image, size)[0]
            if self.area_thd is not None:
                return sclip_labels(full, self.query_to_class, self.num_classes, self.logit_scale, prob_thd, self.area_thd)
            return logits_to_labels(full, self.query_to_class, self.logit_scale, prob_thd)

    @torch.no_grad()
    def segment_resized(self, image: torch.Tensor, size: tuple[int, int], prob_thd: float | None = None,
                        **inputs: Any) -> torch.Tensor:
        """Label map of an image already resized to the test scale.

        Args:
            image: [1, 3, h, w] RGB in [0, 1] (e.g. a datamodule sample / 255).
            size: the original (H0, W0); the logits are upsampled bilinearly to it before post-processing.
            prob_thd: overrides the segmenter's threshold.
            inputs: the image's :meth:`image_inputs` (whole-image methods).
        Returns:
            LongTensor [H0, W0] of class ids in [0, C).
        """
        thd = self.prob_thd if prob_thd is None else prob_thd
        image = image.to(self.device)
        return self.postprocess(self.slide_logits(image, **inputs), image, size, thd, **inputs)

    @torch.no_grad()
    def predict(self, image: np.ndarray, image_id: str | None = None, **given: Any) -> torch.Tensor:
        """Segment one image (the method's whole pipeline: resize, windows, PAMR, post-processing).

        Args:
            image: numpy HxWx3 uint8 RGB at its original size (gray, RGBA and 16-bit are converted).
            image_id: the sample id (file stem), for methods whose inputs are looked up by it (cached masks).
            given: per-image inputs the caller already has (see :meth:`image_inputs`).
        Returns:
            LongTensor [H, W] of class ids in [0, C), on the model's device.
        """
        rgb = to_rgb_uint8(image)
        inputs = self.image_inputs(rgb, image_id, **given) if self.uses_original_image else given
        return self.segment_resized(self.preprocess(rgb), rgb.shape[:2], **inputs)


def protocol_kwargs(protocol: Protocol) -> dict:
    """Constructor keywords of a :class:`Segmenter` from a :class:`~proxyclip_pl.native_protocols.Protocol`."""
    return dict(
        short_side=protocol.short_side, long_side_cap=protocol.long_side_cap, slide_crop=protocol.slide_crop,
        slide_stride=protocol.slide_stride, logit_scale=protocol.logit_scale, prob_thd=protocol.prob_thd,
        area_thd=protocol.area_thd, pamr_steps=protocol.pamr_steps, **dict(protocol.options),
    )
