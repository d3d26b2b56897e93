"""Interleaved timing shared by the benchmarks: every build runs one block of inferences per round, so a
burst of load on this shared machine hits every row alike."""

from __future__ import annotations

import functools
import importlib
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from edgekit.data import TensorSpec, load_dataset
from edgekit.demo import demo_options
from edgekit.onnx_hub import x86_without_vnni


def machine() -> dict:
    """This machine as the int8 benchmarks record it (int8 speed on x86 depends on VNNI)."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "x86_without_vnni": x86_without_vnni(),
    }


def demo_photo(target: str = "host") -> np.ndarray:
    """The timing input: the last of the demo's calibration crops, preprocessed for EfficientNet-Lite0."""
    options = demo_options(target, held_out="crops")
    data = load_dataset(options.calib, [TensorSpec("input", (1, 3, 224, 224), "float32")], options.image)
    return next(iter(data.sample(len(data) - 1).values()))


def interleaved(builds: list[tuple[str, Path]], image: np.ndarray, rounds: int, block: int) -> dict[str, float]:
    """Median per-inference time (ms) of every build folder, timed in alternating blocks over several rounds."""
    runs = {}
    for key, folder in builds:
        manifest = json.loads((folder / "build.json").read_text())
        runtime = importlib.import_module(f"edgekit.converters.{manifest['backend']}.runtime")
        run, _ = runtime.load(folder, manifest, os.cpu_count() or 1)
        feed = {manifest["inputs"][0]["name"]: image}
        for _ in range(5):
            run(feed)
        runs[key] = functools.partial(run, feed)
    times: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(rounds):
        for key, run in runs.items():
            for _ in range(block):
                t = time.perf_counter()
                run()
                times[key].append((time.perf_counter() - t) * 1000)
    return {key: float(np.median(v)) for key, v in times.items()}
