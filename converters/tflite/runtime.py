"""Runs a LiteRT build on the device (numpy and ai-edge-litert or tflite-runtime only; Python 3.9+)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail["quantization"]
    if detail["dtype"] in (np.float32, np.float16) or not scale:
        return x.astype(detail["dtype"])
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail["quantization"]
    if not scale or y.dtype.kind == "f":
        return y
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


def _perm(x: np.ndarray, perm) -> np.ndarray:
    return x if not perm else np.ascontiguousarray(x.transpose(perm))


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def load(build_dir: Path, manifest: dict, threads: int):
    """(run function, runtime version); inputs/outputs are mapped, permuted and (de)quantized per the manifest."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        version = "ai-edge-litert " + _version("ai-edge-litert")
    except ImportError:
        from tflite_runtime.interpreter import Interpreter

        version = "tflite-runtime " + _version("tflite-runtime")
    interp = Interpreter(model_path=str(build_dir / manifest["artifacts"]["model"]), num_threads=threads)
    interp.allocate_tensors()
    ins, outs = interp.get_input_details(), interp.get_output_details()

    def run(feed: dict) -> list:
        for spec in manifest["inputs"]:
            detail = ins[spec["index"]]
            value = _perm(feed[spec["name"]], spec.get("perm"))
            # "raw": the model's own integer I/O (an already-quantized source): fed and read as they are.
            interp.set_tensor(detail["index"], value if spec.get("raw") else _quantize(value, detail))
        interp.invoke()
        result = []
        for spec in manifest["outputs"]:
            detail = outs[spec["index"]]
            value = interp.get_tensor(detail["index"])
            result.append(_perm(value if spec.get("raw") else _dequantize(value, detail), spec.get("perm")))
        return result

    return run, version
