"""The benchmarks every command knows: built-in presets, installed distributions' and run-time entries.

* **Built-in**: ``presets.BUILTIN_BENCHMARKS``, one :class:`~datamodules.presets.BenchmarkPreset` per benchmark.
* **Installed distributions**: an entry point ``KEY = "module:SPEC"`` in the group ``proxyclip_pl.benchmarks``
  naming a :class:`BenchmarkSpec` (e.g. ``BenchmarkSpec.from_card({...})``), loaded when first used.
* **Run time**: :func:`register_benchmark`.

``BENCHMARKS`` is the read-only view of all three: every ``BENCHMARKS[key]`` lookup of the package (and of
``build_datamodule``) sees a registered benchmark as it sees a built-in one. Nothing registers on import.
"""
from __future__ import annotations

import importlib
from collections.abc import Collection, Iterator, Mapping
from importlib import metadata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .presets import BenchmarkPreset

#: Entry-point group of third-party benchmarks (values ``module:ATTR`` naming a ``BenchmarkSpec``).
BENCHMARKS_GROUP = "proxyclip_pl.benchmarks"
BUILTIN = "built-in"


def distribution_name(ep: metadata.EntryPoint) -> str:
    """The name of the installed distribution that declares ``ep``."""
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else "an installed distribution"


def load_entry(address: str, what: str) -> object:
    """The object named by ``module:ATTR`` (``ValueError`` naming ``what`` when it cannot be loaded)."""
    module, _, attr = address.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{what}: cannot load {address} ({exc})") from None


def discover(group: str, builtin: Collection[str], what: str) -> dict[str, metadata.EntryPoint]:
    """The entry points of ``group`` by name (nothing loaded). A name that clashes with a built-in ``what`` or is
    declared by two distributions is a ``ValueError`` naming both sources."""
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=group):
        if ep.name in builtin:
            raise ValueError(f"{what} {ep.name!r} of the distribution {distribution_name(ep)!r} clashes with the "
                             f"built-in {what} {ep.name!r}; rename its entry point in {group}")
        if ep.name in found and found[ep.name].value != ep.value:
            raise ValueError(f"{what} {ep.name!r} is declared by the distributions "
                             f"{distribution_name(found[ep.name])!r} and {distribution_name(ep)!r}; uninstall one")
        found[ep.name] = ep
    return found


class BenchmarkRegistry(Mapping):
    """Key -> :class:`BenchmarkSpec`: the built-in presets, then installed entry points, then run-time entries."""

    def __init__(self, builtin: Mapping[str, "BenchmarkPreset"]) -> None:
        self._builtin = builtin
        self._runtime: dict[str, BenchmarkPreset] = {}
        self._loaded: dict[str, BenchmarkPreset] = {}

    def _entry_points(self) -> dict[str, metadata.EntryPoint]:
        return discover(BENCHMARKS_GROUP, self._builtin, "benchmark")

    def sources(self) -> dict[str, str]:
        """Key -> ``built-in``, the distribution's name or ``run time`` (loads nothing)."""
        sources = dict.fromkeys(self._builtin, BUILTIN)
        sources.update({key: distribution_name(ep) for key, ep in self._entry_points().items()})
        sources.update(dict.fromkeys(self._runtime, "run time"))
        return sources

    def __iter__(self) -> Iterator[str]:
        return iter(self.sources())

    def __len__(self) -> int:
        return len(self.sources())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.sources()

    def __getitem__(self, key: str) -> "BenchmarkPreset":
        if key in self._builtin:
            return self._builtin[key]
        if key in self._runtime:
            return self._runtime[key]
        if key not in self._loaded:
            installed = self._entry_points()
            if key not in installed:
                raise KeyError(key)
            ep = installed[key]
            what = f"benchmark {key!r} of {distribution_name(ep)!r}"
            self._loaded[key] = self._checked(load_entry(ep.value, what), key, what)
        return self._loaded[key]

    @staticmethod
    def _checked(spec: object, key: str, what: str) -> "BenchmarkPreset":
        from .presets import BenchmarkPreset

        if not isinstance(spec, BenchmarkPreset):
            raise ValueError(f"{what} is a {type(spec).__name__}, not a datamodules.BenchmarkSpec")
        if spec.key != key:
            raise ValueError(f"{what} is the spec of {spec.key!r}; its entry point must be named after it")
        return spec

    def register(self, spec: "BenchmarkPreset") -> None:
        self._checked(spec, spec.key, f"benchmark {spec.key!r}")
        sources = self.sources()
        if spec.key in sources and self._runtime.get(spec.key) is not spec:
            raise ValueError(f"benchmark {spec.key!r} is already defined ({sources[spec.key]}); choose another key")
        self._runtime[spec.key] = spec

    def unregister(self, key: str) -> None:
        self._runtime.pop(key, None)


def register_benchmark(spec: "BenchmarkPreset") -> None:
    """Add a benchmark at run time (until the process ends); a key already known is an error naming both."""
    from .presets import BENCHMARKS

    BENCHMARKS.register(spec)


def unregister_benchmark(key: str) -> None:
    """Remove a benchmark added with :func:`register_benchmark` (tests, notebooks)."""
    from .presets import BENCHMARKS

    BENCHMARKS.unregister(key)


def benchmark_sources() -> dict[str, str]:
    """Every benchmark key -> where it comes from (``built-in``, a distribution's name or ``run time``)."""
    from .presets import BENCHMARKS

    return BENCHMARKS.sources()
