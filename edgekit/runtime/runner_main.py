"""Self-contained build runner: loads one build, runs held-out inputs, times it, writes outputs.

It needs only numpy and the build's runtime (onnxruntime, ai-edge-litert/tflite-runtime, openvino or
the TVM runtime), so the same file runs on the host, inside an emulated device, or on a board:

    python runner_main.py BUILD_DIR INPUTS.npz OUT_DIR [--warmup N] [--runs N] [--threads N]

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


def _perm(x: np.ndarray, perm: list[int] | None) -> np.ndarray:
    return x if not perm else np.ascontiguousarray(x.transpose(perm))


def load_tflite(build_dir: Path, manifest: dict, threads: int):
    try:
        from ai_edge_litert.interpreter import Interpreter

        version = "ai-edge-litert " + _dist_version("ai-edge-litert")
    except ImportError:
        from tflite_runtime.interpreter import Interpreter

        version = "tflite-runtime " + _dist_version("tflite-runtime")
    interp = Interpreter(model_path=str(build_dir / manifest["artifacts"]["model"]), num_threads=threads)
    interp.allocate_tensors()
    ins, outs = interp.get_input_details(), interp.get_output_details()

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
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


def load_onnxruntime(build_dir: Path, manifest: dict, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(
        str(build_dir / manifest["artifacts"]["model"]), opts, providers=["CPUExecutionProvider"]
    )
    names = [o["name"] for o in manifest["outputs"]]
    return (lambda feed: sess.run(names, feed)), "onnxruntime " + ort.__version__


def load_openvino(build_dir: Path, manifest: dict, threads: int):
    import openvino as ov

    core = ov.Core()
    config = {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": manifest.get("inference_precision", "f32"),
    }
    compiled = core.compile_model(str(build_dir / manifest["artifacts"]["model"]), "CPU", config)
    request = compiled.create_infer_request()
    outputs = [compiled.output(o["name"]) for o in manifest["outputs"]]

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = request.infer(feed)
        return [np.array(result[o]) for o in outputs]

    run.runtime_precisions = lambda: _ov_precisions(compiled)
    return run, "openvino " + ov.get_version().split("-")[0]


def _ov_precisions(compiled) -> dict[str, int]:
    """How many executed layers ran in each precision (OpenVINO runtime info)."""
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in ("Input", "Parameter", "Const", "Output", "Result"):
            continue
        prec = info["runtimePrecision"].astype(str)
        counts[prec] = counts.get(prec, 0) + 1
    return counts


def load_tvm(build_dir: Path, manifest: dict, threads: int):
    os.environ["TVM_NUM_THREADS"] = str(threads)
    import tvm
    from tvm.runtime.vm import VirtualMachine

    arch = platform.machine()
    artifact = manifest["artifacts"].get(arch)
    if artifact is None:
        raise RuntimeError(f"this TVM build has no library for {arch} (has {sorted(manifest['artifacts'])})")
    lib = tvm.runtime.load_module(str(build_dir / artifact))
    vm = VirtualMachine(lib, tvm.cpu())
    names = [i["name"] for i in manifest["inputs"]]

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = vm["main"](*[tvm.runtime.tensor(feed[n]) for n in names])
        outs = out if isinstance(out, (list, tuple)) or type(out).__name__ == "Array" else [out]
        return [o.numpy() for o in outs]

    return run, "tvm " + tvm.__version__


def load_hls4ml(build_dir: Path, manifest: dict, threads: int):
    """hls4ml's C-simulation library through ctypes (what hls4ml's predict() does, without hls4ml)."""
    import ctypes

    from numpy import ctypeslib

    lib = ctypes.cdll.LoadLibrary(str(build_dir / manifest["artifacts"]["csim"]))
    top = getattr(lib, manifest["project_name"] + "_float")
    outs = manifest["outputs"]
    top.restype = None
    top.argtypes = [ctypeslib.ndpointer(ctypes.c_float, flags="C_CONTIGUOUS")] * (len(manifest["inputs"]) + len(outs))
    names = [i["name"] for i in manifest["inputs"]]

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = [np.zeros(int(np.prod(o["shape"])), np.float32) for o in outs]
        top(*[np.ascontiguousarray(feed[n], dtype=np.float32).ravel() for n in names], *results)
        return [r.reshape(o["shape"]) for r, o in zip(results, outs)]  # noqa: B905 (runs on Python 3.9)

    return run, "hls4ml C-simulation (ap_fixed, g++)"


def load_coreml(build_dir: Path, manifest: dict, threads: int):
    """Core ML through coremltools' predict(): only on macOS, where Apple's Core ML framework exists."""
    import coremltools as ct

    model = ct.models.MLModel(str(build_dir / manifest["artifacts"]["model"]))
    outputs = [o["name"] for o in manifest["outputs"]]

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = model.predict(feed)
        return [np.asarray(result[o]) for o in outputs]

    return run, "coremltools " + ct.__version__


def _profile_onnxruntime(build_dir: Path, manifest: dict, threads: int, feeds: list, repeats: int) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.enable_profiling = True
    opts.profile_file_prefix = str(build_dir.parent / "ort_profile")
    sess = ort.InferenceSession(
        str(build_dir / manifest["artifacts"]["model"]), opts, providers=["CPUExecutionProvider"]
    )
    for i in range(repeats):
        sess.run(None, feeds[i % len(feeds)])
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    ops: dict[str, dict] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name = e["name"].removesuffix("_kernel_time")
            op = ops.setdefault(name, {"name": name, "type": e.get("args", {}).get("op_name", "?"), "us": 0.0})
            op["us"] += e["dur"]
    return {"tool": "onnxruntime profiler (kernel time)", "ops": list(ops.values())}


def _profile_openvino(build_dir: Path, manifest: dict, threads: int, feeds: list, repeats: int) -> dict:
    import openvino as ov

    config = {
        "INFERENCE_NUM_THREADS": threads,
        "PERF_COUNT": True,
        "INFERENCE_PRECISION_HINT": manifest.get("inference_precision", "f32"),
    }
    compiled = ov.Core().compile_model(str(build_dir / manifest["artifacts"]["model"]), "CPU", config)
    request = compiled.create_infer_request()
    ops: dict[str, dict] = {}
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


PROFILERS = {"onnxruntime": _profile_onnxruntime, "openvino": _profile_openvino}
NO_PROFILER = {
    "tflite": "the LiteRT Python interpreter has no op profiler: use benchmark_model --enable_op_profiling=true",
    "tvm": "the TVM runtime VM of an exported library has no per-op profiler; build with relax profiling instruments",
    "hls4ml": "a C-simulation has no per-layer timing: use the HLS synthesis report, or trace=True per layer",
    "coreml": "Core ML's per-op profile needs Xcode's Core ML performance report (macOS)",
}


def profile_build(build_dir: Path, threads: int, feeds: list, repeats: int = 10) -> dict:
    """Per-op time (mean µs per inference) where the runtime offers a profiler."""
    manifest = json.loads((build_dir / "build.json").read_text())
    backend = manifest["backend"]
    if backend not in PROFILERS:
        return {"unavailable": NO_PROFILER[backend]}
    result = PROFILERS[backend](build_dir, manifest, threads, feeds, repeats)
    for op in result["ops"]:
        op["us"] /= repeats
    result["ops"].sort(key=lambda op: -op["us"])
    result["repeats"] = repeats
    return result


LOADERS = {
    "tflite": load_tflite,
    "onnxruntime": load_onnxruntime,
    "openvino": load_openvino,
    "tvm": load_tvm,
    "hls4ml": load_hls4ml,
    "coreml": load_coreml,
}


def load_build(build_dir: Path, threads: int):
    """(run function, runtime version) for the build in ``build_dir``."""
    manifest = json.loads((build_dir / "build.json").read_text())
    return LOADERS[manifest["backend"]](build_dir, manifest, threads)


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
    args = parser.parse_args(argv)

    with np.load(args.inputs, allow_pickle=False) as npz:
        inputs = {k: npz[k] for k in npz.files}
    n = len(next(iter(inputs.values())))
    feeds = [{k: v[i : i + 1] for k, v in inputs.items()} for i in range(n)]

    t0 = time.perf_counter()
    run, runtime = load_build(args.build_dir, args.threads)
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
        result["profile"] = profile_build(args.build_dir, args.threads, feeds)
    if hasattr(run, "runtime_precisions"):
        result["runtime_precisions"] = run.runtime_precisions()
    (args.out_dir / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
