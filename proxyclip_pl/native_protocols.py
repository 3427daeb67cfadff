"""Test protocols as data: :class:`Protocol`, ProxyCLIP's rows (from the benchmark presets), :class:`MethodInfo`
and :func:`protocol_for`. The native rows, published numbers and provenance of SCLIP, NACLIP and ClearCLIP live
beside their classes (``proxyclip_pl.methods``: their specs' ``protocols``, ``published`` and ``info``; read here
as ``NATIVE_PROTOCOLS``, ``REPORTED_MIOU`` and ``METHODS``).

Every native value comes from the official repositories (snapshot commits in ``METHODS``):

* the ``Resize(scale=(2048, S), keep_ratio=True)`` step of ``configs/cfg_<dataset>.py`` gives the short side S
  and the long-side cap 2048 (mmcv: ``scale = min(2048 / long, S / short)``);
* the ``model=dict(...)`` overrides of the same file, on top of the segmentor's constructor defaults
  (SCLIP ``clip_segmentor.py`` ``CLIPForSegmentation``, NACLIP ``naclip.py`` ``NACLIP``, ClearCLIP
  ``clearclip_segmentor.py`` ``ClearCLIPSegmentation``), give the window, logit scale and thresholds;
* NACLIP's published numbers are produced with ``test_all.sh reduced naclip 5 on`` (README), i.e. PAMR on,
  which ``eval.py`` turns into ``pamr_steps=10`` (also the constructor default). SCLIP's ``pamr_steps``
  defaults to 0 and no config sets it; ClearCLIP has no PAMR.

``slide_crop == 0`` means the whole image is encoded at once (NACLIP's VOC21/VOC20); ``slide_stride`` is
then the unused constructor default, kept as the official value.

Dataset keys are this package's benchmark keys; :data:`OFFICIAL_CONFIGS` maps them to the config files.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import Any, Mapping

from datamodules.presets import BUILTIN_BENCHMARKS, MAIN_BENCHMARKS, BenchmarkPreset

from .registry import BUILTIN_METHOD_SPECS

#: The paper's Table-1 benchmarks, in its column order (``datamodules.MAIN_BENCHMARKS``).
DATASETS = MAIN_BENCHMARKS

#: package dataset key -> official config file (same name in all three repositories; the benchmark's preset).
OFFICIAL_CONFIGS: Mapping[str, str] = MappingProxyType({key: BUILTIN_BENCHMARKS[key].official_config
                                                        for key in DATASETS})


@dataclass(frozen=True)
class Protocol:
    """One method's test protocol on one dataset.

    Attributes:
        short_side: test resize short side S (mmcv ``Resize(scale=(long_side_cap, S), keep_ratio=True)``).
        long_side_cap: the long side is capped at this.
        slide_crop: window side (the official config key ``slide_crop``; the dataset presets'
            ``crop_size``; the commands' ``--crop``): the sliding window's unit is a *window* of this side;
            0 = whole image, no windows.
        slide_stride: window step (official ``slide_stride``; unused when ``slide_crop == 0``).
        logit_scale: multiplies the cosine logits before the softmax over queries.
        prob_thd: pixels whose best class probability is below it become class 0.
        area_thd: SCLIP's foreground area filter (see
            :func:`proxyclip_pl.correlative_attention.area_filter`); ``None`` = off.
        pamr_steps: PAMR iterations (0 = off; dilations in :attr:`MethodInfo.pamr_dilations`).
        options: the method's own constructor keywords on this benchmark, ``(name, value)`` pairs (official config
            values beyond the common ones, e.g. Trident's ``cos_fac``, CorrCLIP's ``mask_folder``); passed to the
            segmenter with the common settings.
    """

    short_side: int
    long_side_cap: int
    slide_crop: int
    slide_stride: int
    logit_scale: float
    prob_thd: float
    area_thd: float | None
    pamr_steps: int
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        def require(condition: bool, message: str) -> None:
            if not condition:
                raise ValueError(f"invalid Protocol: {message}")

        for name in ("short_side", "long_side_cap", "slide_crop", "slide_stride", "pamr_steps"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool), f"{name} must be an int, got {value!r}")
        require(self.short_side > 0, f"short_side must be positive, got {self.short_side}")
        require(self.long_side_cap >= self.short_side, f"long_side_cap ({self.long_side_cap}) < short_side ({self.short_side})")
        require(self.slide_crop >= 0, f"slide_crop must be >= 0, got {self.slide_crop}")
        require(self.slide_stride > 0, f"slide_stride must be positive, got {self.slide_stride}")
        require(
            self.slide_crop == 0 or self.slide_stride <= self.slide_crop,
            f"slide_stride ({self.slide_stride}) exceeds slide_crop ({self.slide_crop})",
        )
        require(self.logit_scale > 0, f"logit_scale must be positive, got {self.logit_scale}")
        require(0.0 <= self.prob_thd <= 1.0, f"prob_thd must lie in [0, 1], got {self.prob_thd}")
        require(
            self.area_thd is None or 0.0 <= self.area_thd <= 1.0, f"area_thd must be None or lie in [0, 1], got {self.area_thd}"
        )
        require(self.pamr_steps >= 0, f"pamr_steps must be >= 0, got {self.pamr_steps}")
        require(all(isinstance(k, str) for k, _ in self.options), f"options must be (name, value) pairs, got {self.options!r}")

    def record(self) -> dict[str, Any]:
        """The protocol as ``results.json`` records it (``config.protocol_settings``): every field, ``options`` as a
        mapping."""
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "options": dict(self.options)}

    @property
    def whole_image(self) -> bool:
        """Whether the whole resized image is encoded in one pass (no sliding window)."""
        return self.slide_crop == 0


@dataclass(frozen=True)
class MethodInfo:
    """Per-method constants (the same for every dataset) and where they come from.

    Attributes:
        repository: GitHub owner/name of the official code; ``commit``: the snapshot read.
        files: files the math and protocols were transcribed from.
        mean, std: input normalisation in 0-255 RGB units (mmseg ``SegDataPreProcessor``; the BGR-loaded image
            is flipped to RGB first).
        synonym_separator: how a line of the class-name files is split into synonyms (the official files are read
            under ``--protocol native``: :mod:`proxyclip_pl.query_vocabularies`).
        pamr_dilations: PAMR neighbour dilations (``pamr_stride``), ``()`` where the method has no PAMR.
        precision: dtype the official code runs the CLIP image tower in.
        window_padding: what happens to a window/image whose side is not a multiple of the patch size.
        differences_from_proxyclip: every place the official pipeline differs from this package's ProxyCLIP.
    """

    repository: str
    commit: str
    files: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    synonym_separator: str
    pamr_dilations: tuple[int, ...]
    precision: str
    window_padding: str
    differences_from_proxyclip: tuple[str, ...]


#: The 0-255 normalisation shared by the three repositories (CLIP's mean/std x 255, rounded to 3 decimals).
OFFICIAL_MEAN = (122.771, 116.746, 104.094)
OFFICIAL_STD = (68.501, 66.632, 70.323)

@dataclass(frozen=True)
class ReportedResults:
    """Published mIoU (%) of a method with CLIP ViT-B/16 (OpenAI weights); ``None`` where not in the source."""

    source: str
    miou: Mapping[str, float | None]


def __getattr__(name: str) -> object:
    """``NATIVE_PROTOCOLS`` (method -> dataset -> Protocol), ``REPORTED_MIOU`` (method -> ReportedResults) and
    ``METHODS`` (method -> MethodInfo, the provenance), derived from the built-in methods' specs
    (:mod:`proxyclip_pl.registry`), which live beside their classes."""
    if name not in ("NATIVE_PROTOCOLS", "REPORTED_MIOU", "METHODS"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .registry import method_spec

    specs = [method_spec(method) for method in BUILTIN_METHOD_SPECS]
    if name == "METHODS":
        return MappingProxyType({spec.name: spec.info for spec in specs if spec.info is not None})
    if name == "NATIVE_PROTOCOLS":
        return MappingProxyType({spec.name: spec.protocols for spec in specs if spec.protocols})
    return MappingProxyType({spec.name: ReportedResults(spec.source, spec.published) for spec in specs
                             if spec.published})


def proxyclip_protocol_of(preset: BenchmarkPreset) -> Protocol:
    """ProxyCLIP's protocol (this package's presets; the official ``configs/cfg_*.py``) for one benchmark: its short
    side, windows and ``prob_thd`` with the long side capped at 2048, logit scale 40, no area filter, no PAMR."""
    return Protocol(preset.short_side, 2048, preset.crop_size, preset.stride, 40.0, preset.prob_thd, None, 0)


#: ProxyCLIP's own protocol (the paper's Table 1 setting), per built-in dataset, derived from the presets
#: (ADE-847 / PC-459: mc-lan/ProxyCLIP configs/cfg_ade847.py, cfg_context459.py). Applied to any method it gives
#: the paper's re-runs.
PROXYCLIP_PROTOCOLS: Mapping[str, Protocol] = MappingProxyType({
    key: proxyclip_protocol_of(preset) for key, preset in BUILTIN_BENCHMARKS.items()})

#: Datasets with a ProxyCLIP protocol but no native row for SCLIP / NACLIP / ClearCLIP (their repositories
#: have no config for them): ``native`` falls back to ProxyCLIP's protocol there.
EXTRA_DATASETS = tuple(key for key in BUILTIN_BENCHMARKS if key not in DATASETS)

#: Built-in methods (``scripts/test.py --method``; the registry's table). ``proxyclip``, ``maskclip`` and ``clip``
#: are this package's (the no-VFM baselines of the ProxyCLIP paper): their native protocol is ProxyCLIP's.
BUILTIN_METHODS = tuple(BUILTIN_METHOD_SPECS)
#: ``native``: the method's own per-dataset setting; ``proxyclip``: ProxyCLIP's setting for every method.
PROTOCOL_NAMES = ("native", "proxyclip")


def protocol_for(method: str, dataset: str, protocol: str = "native") -> Protocol:
    """The inference protocol of ``method`` on ``dataset``.

    Args:
        method: a registered method (:mod:`proxyclip_pl.registry`: built-in, installed or registered at run
            time); its :attr:`~proxyclip_pl.registry.MethodSpec.protocols` hold its native rows. Any other name
            (e.g. a plug-in ``module:factory``) has no native table and gets ProxyCLIP's protocol.
        dataset: one of :data:`DATASETS` or :data:`EXTRA_DATASETS` (no native rows: ProxyCLIP's protocol).
        protocol: ``native`` (the method's rows, ProxyCLIP's where it has none) or ``proxyclip``
            (:data:`PROXYCLIP_PROTOCOLS` for every method, with the native row's
            :attr:`~proxyclip_pl.Segmenter.data_options`, e.g. CorrCLIP's mask sub-folder).
    """
    if protocol not in PROTOCOL_NAMES:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOL_NAMES)}")
    from .registry import method_sources, method_spec

    spec = method_spec(method) if method in method_sources() else None
    native = (spec.protocols or {}).get(dataset) if spec else None
    if native is not None and protocol == "native":
        return native
    base = proxyclip_protocol(dataset)
    kept = tuple((k, v) for k, v in (native.options if native else ()) if k in spec.segmenter.data_options)
    return replace(base, options=kept) if kept else base


def proxyclip_protocol(dataset: str) -> Protocol:
    """ProxyCLIP's protocol on ``dataset``: :data:`PROXYCLIP_PROTOCOLS`, or for a registered benchmark (installed
    or run time, :mod:`datamodules.registry`) its spec's short side, windows and ``prob_thd`` with ProxyCLIP's
    logit scale, no area filter and no PAMR (as a dataset card)."""
    if dataset in PROXYCLIP_PROTOCOLS:
        return PROXYCLIP_PROTOCOLS[dataset]
    from datamodules import BENCHMARKS

    if dataset not in BENCHMARKS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(BENCHMARKS)}")
    return proxyclip_protocol_of(BENCHMARKS[dataset])
