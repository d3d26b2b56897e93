"""Self-contained build runner: loads one build, runs held-out inputs, times it, writes outputs.

It needs only numpy and the build's runtime (onnxruntime, ai-edge-litert/tflite-runtime, openvino or
the TVM runtime), so the same file runs on the host, inside an emulated device, or on a board, beside the
backend's own loader (``converters/<backend>/runtime.py``):

    python runner_main.py BUILD_DIR INPUTS.npz OUT_DIR --runtime RUNTIME.py [--warmup N] [--runs N] [--threads N]

BUILD_DIR holds ``build.json`` (backend, artifacts, input/output mapping). OUT_DIR receives
``outputs.npz`` (one array per output, samples on axis 0) and ``result.json`` (timings, device facts).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np


def load_runtime(path: Path):
    """A backend's ``runtime.py`` (shipped beside this file to the device) as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"edgekit_runtime_{abs(hash(str(path)))}", str(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _runtime_file(backend: str) -> Path:
    """On a host with edgekit installed: the backend's runtime file, from edgekit's registry."""
    from edgekit.converters import backend_spec

    return backend_spec(backend).runtime_file


def _open(build_dir: Path, runtime: Path | None):
    """The build's manifest and its backend's runtime module."""
    manifest = json.loads((build_dir / "build.json").read_text())
    return manifest, load_runtime(runtime or _runtime_file(manifest["backend"]))


def load_build(build_dir: Path, threads: int, runtime: Path | None = None):
    """(run function, runtime version) for the build in ``build_dir``, loaded by its backend's ``runtime``."""
    manifest, module = _open(build_dir, runtime)
    return module.load(build_dir, manifest, threads)


def profile_build(build_dir: Path, manifest: dict, module, threads: int, feeds: list, repeats: int = 10) -> dict:
    """Per-op time (mean µs per inference) from the backend runtime ``module``'s ``profile()``."""
    if not hasattr(module, "profile"):
        return {"unavailable": f"{manifest['backend']} has no per-op profiler"}
    result = module.profile(build_dir, manifest, threads, feeds, repeats)
    for op in result["ops"]:
        op["us"] /= repeats
    result["ops"].sort(key=lambda op: -op["us"])
    result["repeats"] = repeats
    return result


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


ARM_PARTS = {
    "0xc07": "Cortex-A7",
    "0xc09": "Cortex-A9",
    "0xc0f": "Cortex-A15",
    "0xd03": "Cortex-A53",
    "0xd05": "Cortex-A55",
    "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72",
    "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1",
    "0xd40": "Neoverse-V1",
}


def peak_rss_mb() -> float:
    """Peak resident memory of this process. VmHWM starts afresh at exec; ru_maxrss keeps the forking parent's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_facts() -> dict:
    """CPU model, cores, kernel, Python and machine of the device this runs on."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            fields.setdefault(key.lower(), value)
    except OSError:
        pass
    part = fields.get("cpu part")
    cpu = ARM_PARTS.get(part, f"Arm CPU part {part}") if part else None
    cpu = cpu or fields.get("model name") or fields.get("hardware") or platform.processor() or platform.machine()
    return {
        "machine": platform.machine(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build_dir", type=Path)
    parser.add_argument("inputs", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--profile", action="store_true", help="also record a per-op profile")
    parser.add_argument("--runtime", type=Path, help="the backend's runtime.py (default: from edgekit's registry)")
    args = parser.parse_args(argv)

    with np.load(args.inputs, allow_pickle=False) as npz:
        inputs = {k: npz[k] for k in npz.files}
    n = len(next(iter(inputs.values())))
    feeds = [{k: v[i : i + 1] for k, v in inputs.items()} for i in range(n)]

    t0 = time.perf_counter()
    manifest, module = _open(args.build_dir, args.runtime)
    run, runtime = module.load(args.build_dir, manifest, args.threads)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    first = run(feeds[0])
    first_s = time.perf_counter() - t0
    outputs = [first] + [run(f) for f in feeds[1:]]
    for i in range(args.warmup):
        run(feeds[i % n])
    times = []
    for i in range(args.runs):
        t0 = time.perf_counter_ns()
        run(feeds[i % n])
        times.append((time.perf_counter_ns() - t0) / 1e6)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(
        args.out_dir / "outputs.npz",
        **{f"output_{j}": np.concatenate([o[j] for o in outputs]) for j in range(len(first))},
    )
    result = {
        "runtime": runtime,
        "threads": args.threads,
        "warmup": args.warmup,
        "runs": args.runs,
        "load_s": load_s,
        "first_inference_ms": first_s * 1e3,
        "latencies_ms": times,
        "peak_rss_mb": peak_rss_mb(),
        "device": device_facts(),
    }
    if args.profile:
        result["profile"] = profile_build(args.build_dir, manifest, module, args.threads, feeds)
    if hasattr(run, "runtime_precisions"):
        result["runtime_precisions"] = run.runtime_precisions(feeds[0])
    (args.out_dir / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
