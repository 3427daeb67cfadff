"""Package attributes imported on first use (PEP 562), for ``datamodules`` and ``proxyclip_pl``."""
from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping


def lazy_attributes(package: str, submodule_of: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module-level ``__getattr__`` and ``__dir__`` for ``package``: the public name ``n`` is imported from
    ``package.<submodule_of[n]>`` when first used, then kept in the package's namespace.

    Usage, in ``package/__init__.py``: ``__getattr__, __dir__ = lazy_attributes(__name__, {"Name": "submodule"})``.
    """

    def __getattr__(name: str) -> Any:
        if name not in submodule_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{submodule_of[name]}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(submodule_of))

    return __getattr__, __dir__
