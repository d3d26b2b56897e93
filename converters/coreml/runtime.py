"""Runs a Core ML build through coremltools' predict(): only on macOS, where Apple's Core ML framework exists."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def load(build_dir: Path, manifest: dict, threads: int):
    """(run function, runtime version)."""
    import coremltools as ct

    model = ct.models.MLModel(str(build_dir / manifest["artifacts"]["model"]))
    outputs = [o["name"] for o in manifest["outputs"]]

    def run(feed: dict) -> list:
        result = model.predict(feed)
        return [np.asarray(result[o]) for o in outputs]

    return run, "coremltools " + ct.__version__
