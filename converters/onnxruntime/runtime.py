"""Runs an ONNX Runtime build on the device (numpy and onnxruntime only; Python 3.9+)."""

from __future__ import annotations

import json
from pathlib import Path


def _session(build_dir: Path, manifest: dict, threads: int, profile: bool = False):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(build_dir.parent / "ort_profile")
    model = str(build_dir / manifest["artifacts"]["model"])
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def load(build_dir: Path, manifest: dict, threads: int):
    """(run function, runtime version); for int8 builds ``run.runtime_precisions(feed)`` counts the kernels this
    device's ONNX Runtime executes (after its own graph optimizations) by op type."""
    import onnxruntime as ort

    sess = _session(build_dir, manifest, threads)
    names = [o["name"] for o in manifest["outputs"]]

    def run(feed):
        return sess.run(names, feed)

    if manifest.get("precision") == "int8":
        run.runtime_precisions = lambda feed: _kernels(build_dir, manifest, threads, feed)
    return run, "onnxruntime " + ort.__version__


def _kernels(build_dir: Path, manifest: dict, threads: int, feed: dict) -> dict:
    """{op type: count} of the kernels one profiled inference ran."""
    counts: dict = {}
    for op in profile(build_dir, manifest, threads, [feed], 1)["ops"]:
        counts[op["type"]] = counts.get(op["type"], 0) + 1
    return counts


def profile(build_dir: Path, manifest: dict, threads: int, feeds: list, repeats: int) -> dict:
    """Kernel time per node over ``repeats`` inferences (ONNX Runtime's profiler)."""
    sess = _session(build_dir, manifest, threads, profile=True)
    for i in range(repeats):
        sess.run(None, feeds[i % len(feeds)])
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    ops: dict = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            op = ops.setdefault(name, {"name": name, "type": e.get("args", {}).get("op_name", "?"), "us": 0.0})
            op["us"] += e["dur"]
    return {"tool": "onnxruntime profiler (kernel time)", "ops": list(ops.values())}
