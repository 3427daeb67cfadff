"""The methods every command knows: one :class:`MethodSpec` per method, from three sources.

* **Built-in**: :data:`BUILTIN_METHOD_SPECS`, an explicit table of ``module:ATTR`` addresses of the specs, each
  defined beside its segmenter class (``proxyclip_pl.model``, ``proxyclip_pl.methods``). The table is read
  without importing those modules, so listing or checking a name costs no torch import.
* **Installed distributions**: an entry point ``NAME = "module:SPEC"`` in the group ``proxyclip_pl.methods``
  (``[project.entry-points."proxyclip_pl.methods"]`` in its ``pyproject.toml``), loaded when first used.
* **Run time**: :func:`register_method` (e.g. from a notebook).

A registered method gets what a built-in one has: its towers built once for all benchmarks, the text-embedding
cache, shared encoder passes, its native protocol and its published row. Nothing registers on import.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

from datamodules.registry import discover, distribution_name, load_entry

from .defaults import DEFAULT_CLIP

if TYPE_CHECKING:
    from .native_protocols import MethodInfo, Protocol

#: Entry-point group of third-party methods (values ``module:ATTR`` naming a :class:`MethodSpec`).
METHODS_GROUP = "proxyclip_pl.methods"
#: The towers a method may ask for (:meth:`proxyclip_pl.Segmenter.from_towers` receives them in the spec's order):
#: CLIP, a VFM, SAM's image encoder (Trident), a region-mask source (CorrCLIP: ``--masks``).
TOWERS = ("clip", "vfm", "sam", "masks")
BUILTIN = "built-in"

#: Built-in method name -> address of its spec (beside its class).
BUILTIN_METHOD_SPECS: Mapping[str, str] = MappingProxyType({
    "proxyclip": "proxyclip_pl.model:PROXYCLIP_SPEC",
    "maskclip": "proxyclip_pl.model:MASKCLIP_SPEC",
    "clip": "proxyclip_pl.model:CLIP_SPEC",
    "sclip": "proxyclip_pl.methods:SCLIP_SPEC",
    "naclip": "proxyclip_pl.methods:NACLIP_SPEC",
    "clearclip": "proxyclip_pl.methods:CLEARCLIP_SPEC",
    "trident": "proxyclip_pl.trident:TRIDENT_SPEC",
    "corrclip": "proxyclip_pl.corrclip:CORRCLIP_SPEC",
})


@dataclass(frozen=True)
class MethodSpec:
    """One training-free segmentation method, as the harness runs it.

    Attributes:
        name: the ``--method`` name.
        segmenter: a :class:`~proxyclip_pl.Segmenter` subclass, constructed by its
            :meth:`~proxyclip_pl.Segmenter.from_towers` (default: ``segmenter(*towers, vocabulary, tokenizer=...,
            text_embeddings=..., **protocol keywords)``); with the ``vfm`` tower it also receives ``vfm_kind``.
        towers: the towers it needs, a subset of :data:`TOWERS` starting with ``"clip"``.
        default_towers: the method's own towers where the user names none: ``vfm``, ``sam`` (timm names) and
            ``clip_weights`` (an open_clip tag), e.g. Trident's DINO ViT-B/16.
        protocols: benchmark key -> its native :class:`~proxyclip_pl.native_protocols.Protocol`; a benchmark
            without one gets ProxyCLIP's protocol.
        published: benchmark key -> published mIoU (%) under the native protocol (``None``: not published).
        source: where the method and its numbers come from (repository@commit, paper table).
        description: one line for ``proxyclip-test --list``.
        info: its provenance (:class:`~proxyclip_pl.native_protocols.MethodInfo`: repository, commit, files read,
            normalisation, the class-name files' synonym separator, differences from ProxyCLIP); a method with one
            reads its official class-name files under ``--protocol native`` where this package ships them.
    """

    name: str
    segmenter: type
    towers: tuple[str, ...] = ("clip",)
    protocols: Mapping[str, "Protocol"] | None = None
    published: Mapping[str, float | None] | None = None
    source: str = ""
    description: str = ""
    info: "MethodInfo | None" = None
    default_towers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not self.name or ":" in self.name or self.name != self.name.strip():
            raise ValueError(f"MethodSpec name {self.name!r} must be a non-empty name without ':' or spaces")
        if not self.towers or self.towers[0] != "clip" or not set(self.towers) <= set(TOWERS):
            raise ValueError(f"MethodSpec {self.name!r}: towers {self.towers!r} must start with 'clip' and be a "
                             f"subset of {TOWERS}")
        from .segmenter import Segmenter  # the spec's class is checked where it is made

        if not (isinstance(self.segmenter, type) and issubclass(self.segmenter, Segmenter)):
            raise TypeError(f"MethodSpec {self.name!r}: segmenter must be a Segmenter subclass, "
                            f"got {self.segmenter!r}")

    @property
    def uses_vfm(self) -> bool:
        return "vfm" in self.towers

    def fill_towers(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """``given`` tower options (the fields of :class:`~proxyclip_pl.factory.Towers`) with those it lacks taken
        from :attr:`default_towers`; the method's ``clip_weights`` (a tag of the default CLIP) only when the CLIP is
        the default one, since another CLIP has its own tags (e.g. Trident's ViT-H/14 row)."""
        filled = dict(given)
        for name, value in self.default_towers.items():
            if name in filled or (name == "clip_weights" and filled.get("clip", DEFAULT_CLIP) != DEFAULT_CLIP):
                continue
            filled[name] = value
        return filled


_RUNTIME: dict[str, MethodSpec] = {}
_LOADED: dict[str, MethodSpec] = {}


def _entry_points() -> dict[str, metadata.EntryPoint]:
    """Installed methods by name; a name that clashes with a built-in or with another distribution is an error."""
    return discover(METHODS_GROUP, BUILTIN_METHOD_SPECS, "method")


def method_sources() -> dict[str, str]:
    """Every method name -> where it comes from (``built-in``, a distribution's name, or ``run time``).
    Loads nothing: costs no torch import."""
    sources = dict.fromkeys(BUILTIN_METHOD_SPECS, BUILTIN)
    sources.update({name: distribution_name(ep) for name, ep in _entry_points().items()})
    sources.update(dict.fromkeys(_RUNTIME, "run time"))
    return sources


def method_spec(name: str) -> MethodSpec:
    """The spec of method ``name`` (``ValueError`` naming the known methods if there is none)."""
    if name in _RUNTIME:
        return _RUNTIME[name]
    if name not in _LOADED:
        if name in BUILTIN_METHOD_SPECS:
            address, what = BUILTIN_METHOD_SPECS[name], f"built-in method {name!r}"
        else:
            installed = _entry_points()
            if name not in installed:
                raise ValueError(f"unknown method {name!r}; expected one of {', '.join(method_sources())} "
                                 "(proxyclip-test --list) or module:factory")
            address, what = installed[name].value, f"method {name!r} of {distribution_name(installed[name])!r}"
        spec = load_entry(address, what)
        if not isinstance(spec, MethodSpec):
            raise ValueError(f"{what}: {address} is a {type(spec).__name__}, not a proxyclip_pl.MethodSpec")
        if spec.name != name:
            raise ValueError(f"{what}: {address} is the spec of {spec.name!r}; the entry point must be named "
                             f"after it")
        _LOADED[name] = spec
    return _LOADED[name]


def register_method(spec: MethodSpec) -> None:
    """Add a method at run time (until the process ends); a name already known is an error naming both."""
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"register_method takes a MethodSpec, got {type(spec).__name__}")
    sources = method_sources()
    if spec.name in sources and _RUNTIME.get(spec.name) is not spec:
        raise ValueError(f"method {spec.name!r} is already defined ({sources[spec.name]}); choose another name")
    _RUNTIME[spec.name] = spec


def unregister_method(name: str) -> None:
    """Remove a method added with :func:`register_method` (tests, notebooks)."""
    _RUNTIME.pop(name, None)
