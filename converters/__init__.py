"""The backend registry: a backend is one folder (``converters/<name>/``) declaring a ``BackendSpec``.

A folder holds ``__init__.py`` (``SPEC = BackendSpec(...)``: capabilities, declared once), the converter
named by ``SPEC.converter`` (build, inspection, per-layer tensors) and ``runtime.py`` (the self-contained
loader that runs on the device: ``load()``, optionally ``profile()``). Backends outside edgekit are found
through ``EDGEKIT_BACKENDS`` (folders separated by ``os.pathsep``), so a new backend is one folder plus its
name in a target file's ``backends``. Everything else in edgekit asks this registry.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
from dataclasses import replace
from functools import cache
from pathlib import Path

from edgekit.converters.base import BackendSpec, BuildContext, BuildResult, Converter, Refused, SkipBuild

from edgekit.errors import EdgekitError

ENV = "EDGEKIT_BACKENDS"


def _external(folder: Path) -> str:
    """Import an external backend folder as a package; its module name."""
    init = folder / "__init__.py"
    if not init.is_file():
        raise EdgekitError(f"{ENV}: '{folder}' is not a backend folder (no __init__.py)", "point it at the folder")
    name = f"edgekit_backend_{folder.name}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception:
            del sys.modules[name]
            raise
    return name


@cache
def _registry(external: str) -> dict[str, tuple[BackendSpec, str]]:
    """name → (spec, package) for the built-in folders and those in ``external`` (the variable's value)."""
    packages = [f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__) if m.ispkg]
    packages += [_external(Path(p).resolve()) for p in external.split(os.pathsep) if p]
    found: dict[str, tuple[BackendSpec, str]] = {}
    for package in packages:
        module = importlib.import_module(package)
        spec = getattr(module, "SPEC", None)
        if not isinstance(spec, BackendSpec):
            raise EdgekitError(f"backend package {package} has no SPEC = BackendSpec(...)", "declare its SPEC")
        if spec.name in found:
            raise EdgekitError(f"two backends are named '{spec.name}' ({package})", "rename one of them")
        found[spec.name] = (replace(spec, folder=Path(module.__file__).parent), package)
    return found


def _entries() -> dict[str, tuple[BackendSpec, str]]:
    return _registry(os.environ.get(ENV, ""))


def backend_names() -> tuple[str, ...]:
    """Every known backend, built-in ones first."""
    return tuple(_entries())


def backend_spec(name: str) -> BackendSpec:
    """The capabilities of backend ``name`` (a one-line error naming the known ones otherwise)."""
    entries = _entries()
    if name not in entries:
        raise EdgekitError(f"unknown backend '{name}'", f"use one or more of {', '.join(entries)}")
    return entries[name][0]


def get_converter(name: str) -> Converter:
    """The converter for backend ``name`` (imported lazily: each backend pulls a large library)."""
    spec = backend_spec(name)
    module, cls = spec.converter.split(":")
    converter_cls = getattr(importlib.import_module(f"{_entries()[name][1]}.{module}"), cls)
    converter = converter_cls()
    converter.spec = spec
    return converter


def runtime_modules() -> list[str]:
    """Every runtime module a device may have (what the device probes look for)."""
    return sorted({m for spec, _ in _entries().values() for m in spec.runtime_modules})


__all__ = [
    "BackendSpec",
    "BuildContext",
    "BuildResult",
    "Converter",
    "Refused",
    "SkipBuild",
    "backend_names",
    "backend_spec",
    "get_converter",
    "runtime_modules",
]
