"""Per-op latency profile of one build on its device (``edgekit profile``)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from edgekit.converters import backend_spec
from edgekit.data import TensorSpec
from edgekit.errors import EdgekitError
from edgekit.metrics import latency_stats
from edgekit.runners import Runner, RunnerError, RunSpec, get_runner
from edgekit.target import Target, load_target


def read_build(build_dir: Path) -> dict:
    """The ``build.json`` manifest of a build folder edgekit wrote, checked; a one-line error otherwise."""
    manifest_path = Path(build_dir) / "build.json"
    if not Path(build_dir).is_dir() or not manifest_path.is_file():
        raise EdgekitError(
            f"'{build_dir}' is not an edgekit build (no build.json)", "pass a folder such as build/tflite_int8"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        declared = manifest.get("model_inputs") or [{"name": i["name"]} for i in manifest["inputs"]]
        specs = [
            TensorSpec(i["name"], tuple(int(d) for d in i.get("shape", ())), str(i.get("dtype", ""))) for i in declared
        ]
        if not all(isinstance(manifest[k], str) for k in ("backend", "precision", "target")) or not specs:
            raise ValueError("backend, precision, target or inputs missing")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EdgekitError(
            f"{manifest_path} is damaged ({type(exc).__name__}: {str(exc)[:120]})",
            "re-run edgekit convert to write the build again",
        ) from exc
    manifest["input_specs"] = specs
    return manifest


def read_inputs(inputs: Path, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """The ``--inputs`` arrays of a build's inputs (named after them, the build's sample shape, finite).

    Builds written before edgekit recorded input shapes are matched by name only.
    """
    from edgekit.data import load_dataset

    if Path(inputs).suffix != ".npz":
        raise EdgekitError(f"--inputs '{inputs}' is not an .npz", "save the inputs with numpy.savez(path, name=array)")
    if all(spec.shape for spec in specs):
        return load_dataset(inputs, specs).inputs
    arrays = load_dataset(inputs, None).inputs
    names = [spec.name for spec in specs]
    if len(arrays) == 1 and len(names) == 1:
        return {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise EdgekitError(f"--inputs '{inputs}' lacks arrays {missing}", "name the arrays after the build's inputs")
    return {n: arrays[n] for n in names}


def profile_build(
    build_dir: Path, inputs: Path, device: str | None = None, threads: int = 1, runs: int = 20, boards: int = 1
) -> dict:
    """Run ``build_dir`` on ``device`` (``boards`` boards of an ``rpc://`` farm at once) with the runtime's
    profiler; returns timings and per-op times (and, from a farm, every board's result)."""
    if threads < 1:
        raise EdgekitError(f"--threads {threads} must be ≥ 1", "pass --threads 1 or more")
    manifest = read_build(build_dir)
    arrays = read_inputs(inputs, manifest["input_specs"])
    names = list(arrays)
    # the target the build was made for (a custom .toml need not be at hand); older builds name a shipped one
    target = Target.from_json(manifest["target_spec"]) if "target_spec" in manifest else load_target(manifest["target"])
    runner = get_runner(device or target.runner, target, boards)
    try:
        runner.prepare()
        return _profile_on(runner, manifest, Path(build_dir), arrays, names, threads, runs)
    finally:
        runner.close()


def _profile_on(
    runner: Runner, manifest: dict, build_dir: Path, arrays: dict, names: list[str], threads: int, runs: int
) -> dict:
    """Profile on a prepared runner."""
    warmup, runs = runner.repetitions(5, runs)
    backend = backend_spec(manifest["backend"])
    reason = runner.cannot_run(backend.name)
    if reason:
        raise EdgekitError(f"{runner.describe()} cannot run {backend.name} builds: {reason}", "pick another --device")
    with tempfile.TemporaryDirectory(prefix="edgekit-profile-") as tmp:
        feed = Path(tmp) / "inputs.npz"
        np.savez(feed, **{n: arrays[n][:4] for n in names})
        try:
            spec = RunSpec(warmup, runs, threads, 1800, profile=not backend.profiler)
            result = runner.run(Path(build_dir).resolve(), feed, Path(tmp), spec)
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
        "profile": info.get("profile") or {"unavailable": backend.profiler},
        **({"boards": info["farm"]} if "farm" in info else {}),
    }
