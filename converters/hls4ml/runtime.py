"""Runs hls4ml's C-simulation library through ctypes (what hls4ml's predict() does, without hls4ml)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
from numpy import ctypeslib


def load(build_dir: Path, manifest: dict, threads: int):
    """(run function, runtime description)."""
    lib = ctypes.cdll.LoadLibrary(str(build_dir / manifest["artifacts"]["csim"]))
    top = getattr(lib, manifest["project_name"] + "_float")
    outs = manifest["outputs"]
    top.restype = None
    top.argtypes = [ctypeslib.ndpointer(ctypes.c_float, flags="C_CONTIGUOUS")] * (len(manifest["inputs"]) + len(outs))
    names = [i["name"] for i in manifest["inputs"]]

    def run(feed: dict) -> list:
        results = [np.zeros(int(np.prod(o["shape"])), np.float32) for o in outs]
        top(*[np.ascontiguousarray(feed[n], dtype=np.float32).ravel() for n in names], *results)
        return [r.reshape(o["shape"]) for r, o in zip(results, outs)]  # noqa: B905 (runs on Python 3.9)

    return run, "hls4ml C-simulation (ap_fixed, g++)"
