"""Backends behind one interface (``Converter``); one module per backend."""

from __future__ import annotations

import importlib

from edgekit.converters.base import BuildContext, BuildResult, Converter, SkipBuild

_MODULES = {
    "onnxruntime": ("onnxruntime", "OnnxRuntimeConverter"),
    "tflite": ("tflite", "TfliteConverter"),
    "openvino": ("openvino", "OpenVinoConverter"),
    "tvm": ("tvm", "TvmConverter"),
    "coreml": ("coreml", "CoreMlConverter"),
    "hls4ml": ("hls4ml", "Hls4mlConverter"),
}
BACKENDS = tuple(_MODULES)


def get_converter(name: str) -> Converter:
    """The converter for backend ``name`` (imported lazily: each backend pulls a large runtime)."""
    module, cls = _MODULES[name]
    return getattr(importlib.import_module(f"edgekit.converters.{module}"), cls)()


__all__ = ["BACKENDS", "BuildContext", "BuildResult", "Converter", "SkipBuild", "get_converter"]
