"""Names a package re-exports without importing their modules at once.

A package's ``__init__`` that would import numpy, or an I/O layer, only to
re-export a name binds the PEP 562 hooks this makes: the name's module is
imported the first time the name is asked for (``from htabtool.sim import
VMImage``, ``htabtool.qemu.splice``), and the value kept in the package.
Used by :mod:`htabtool.sim` (``vm info`` needs no numpy) and
:mod:`htabtool.qemu` (the walker imports no I/O module).  Imports nothing of
htabtool.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, homes: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package`` whose names
    ``homes`` maps to the submodule that defines each."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{home}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(homes))

    return __getattr__, __dir__
