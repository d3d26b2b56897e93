"""Per-op latency profile of one build on its device (``edgekit profile``)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.metrics import latency_stats
from edgekit.runners import RunnerError, RunSpec, get_runner
from edgekit.target import load_target


def profile_build(build_dir: Path, inputs: Path, device: str | None = None, threads: int = 1, runs: int = 20) -> dict:
    """Run ``build_dir`` on ``device`` with the runtime's profiler; returns timings and per-op times."""
    manifest_path = Path(build_dir) / "build.json"
    if not manifest_path.is_file():
        raise EdgekitError(
            f"'{build_dir}' is not an edgekit build (no build.json)", "pass a folder such as build/tflite_int8"
        )
    manifest = json.loads(manifest_path.read_text())
    target = load_target(manifest["target"])
    runner = get_runner(device or target.runner, target)
    runner.prepare()
    names = [i["name"] for i in manifest["inputs"]]
    try:
        with np.load(inputs, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise EdgekitError(
            f"inputs '{inputs}' cannot be read ({exc})", "pass an .npz with one array per input"
        ) from exc
    if len(arrays) == 1 and len(names) == 1:
        arrays = {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise EdgekitError(f"inputs '{inputs}' lack arrays {missing}", "name the arrays after the build's inputs")
    warmup, runs = runner.repetitions(5, runs)
    with tempfile.TemporaryDirectory(prefix="edgekit-profile-") as tmp:
        feed = Path(tmp) / "inputs.npz"
        np.savez(feed, **{n: arrays[n][:4] for n in names})
        try:
            result = runner.run(Path(build_dir).resolve(), feed, Path(tmp), RunSpec(warmup, runs, threads, 1800, True))
        except RunnerError as exc:
            raise EdgekitError(
                f"profiling failed on {runner.describe()}: {exc}", "check the build runs with convert"
            ) from exc
        finally:
            shutil.rmtree(Path(tmp) / "run", ignore_errors=True)
    info = result.info
    return {
        "build": str(build_dir),
        "backend": manifest["backend"],
        "device": runner.describe(),
        "emulated": runner.emulated,
        "runtime": info["runtime"],
        "threads": info["threads"],
        "latency_ms": latency_stats(info["latencies_ms"]),
        "profile": info.get("profile", {}),
    }
