"""Runs an OpenVINO IR build on the device's CPU plugin (numpy and openvino only; Python 3.9+)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _compile(build_dir: Path, manifest: dict, threads: int, **config):
    import openvino as ov

    config = {
        "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": manifest.get("inference_precision", "f32"),
        **config,
    }
    return ov.Core().compile_model(str(build_dir / manifest["artifacts"]["model"]), "CPU", config)


def _precisions(compiled) -> dict:
    """Executed layers by layer type and runtime precision (OpenVINO runtime info): {"Convolution": {"u8": 49}}."""
    counts: dict = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind in ("Input", "Parameter", "Const", "Output", "Result"):
            continue
        prec = info["runtimePrecision"].astype(str)
        counts.setdefault(kind, {})
        counts[kind][prec] = counts[kind].get(prec, 0) + 1
    return counts


def load(build_dir: Path, manifest: dict, threads: int):
    """(run function, runtime version); ``run.runtime_precisions(feed)`` reports what the plugin executes."""
    import openvino as ov

    compiled = _compile(build_dir, manifest, threads, PERFORMANCE_HINT="LATENCY")
    request = compiled.create_infer_request()
    outputs = [compiled.output(o["name"]) for o in manifest["outputs"]]

    def run(feed: dict) -> list:
        result = request.infer(feed)
        return [np.array(result[o]) for o in outputs]

    run.runtime_precisions = lambda feed: _precisions(compiled)
    return run, "openvino " + ov.get_version().split("-")[0]


def profile(build_dir: Path, manifest: dict, threads: int, feeds: list, repeats: int) -> dict:
    """Real time per executed layer (OpenVINO performance counters)."""
    compiled = _compile(build_dir, manifest, threads, PERF_COUNT=True)
    request = compiled.create_infer_request()
    ops: dict = {}
    for i in range(repeats):
        request.infer(feeds[i % len(feeds)])
        for info in request.get_profiling_info():
            if info.status != info.Status.EXECUTED:
                continue
            op = ops.setdefault(
                info.node_name, {"name": info.node_name, "type": f"{info.node_type} ({info.exec_type})", "us": 0.0}
            )
            op["us"] += info.real_time.total_seconds() * 1e6
    return {"tool": "OpenVINO performance counters", "ops": list(ops.values())}
