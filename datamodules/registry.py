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
from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .presets import BenchmarkPreset

#: Entry-point group of third-party benchmarks (values ``module:ATTR`` naming a ``BenchmarkSpec``).
BENCHMARKS_GROUP = "proxyclip_pl.benchmarks"
BUILTIN = "built-in"


def _distribution(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else "an installed distribution"


class BenchmarkRegistry(Mapping):
    """Key -> :class:`BenchmarkSpec`: the built-in presets, then installed entry points, then run-time entries."""

    def __init__(self, builtin: Mapping[str, "BenchmarkPreset"]) -> None:
        self._builtin = builtin
        self._runtime: dict[str, BenchmarkPreset] = {}
        self._loaded: dict[str, BenchmarkPreset] = {}

    def _entry_points(self) -> dict[str, metadata.EntryPoint]:
        found: dict[str, metadata.EntryPoint] = {}
        for ep in metadata.entry_points(group=BENCHMARKS_GROUP):
            if ep.name in self._builtin:
                raise ValueError(f"benchmark {ep.name!r} of the distribution {_distribution(ep)!r} clashes with the "
                                 f"built-in benchmark {ep.name!r}; rename its entry point in {BENCHMARKS_GROUP}")
            if ep.name in found and found[ep.name].value != ep.value:
                raise ValueError(f"benchmark {ep.name!r} is declared by the distributions "
                                 f"{_distribution(found[ep.name])!r} and {_distribution(ep)!r}; uninstall one")
            found[ep.name] = ep
        return found

    def sources(self) -> dict[str, str]:
        """Key -> ``built-in``, the distribution's name or ``run time`` (loads nothing)."""
        sources = dict.fromkeys(self._builtin, BUILTIN)
        sources.update({key: _distribution(ep) for key, ep in self._entry_points().items()})
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
            module, _, attr = ep.value.partition(":")
            what = f"benchmark {key!r} of {_distribution(ep)!r}"
            try:
                spec = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise ValueError(f"{what}: cannot load {ep.value} ({exc})") from None
            self._loaded[key] = self._checked(spec, key, what)
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
