"""Benchmark: where ONNX Runtime's int8 time goes, kernel by kernel, against its fp32 build of the same model.

    python bench/bench_int8_kernels.py [--target host] [--repeats 60] [--rounds 5] [--block 20] [--samples 5]
                                       [--out bench]

Converts the demo's EfficientNet-Lite0 for ONNX Runtime in fp32 and int8 (edgekit's defaults), profiles both with
ONNX Runtime's profiler on one real calibration photo (in alternating blocks of runs), and sums the kernel time per
kind of layer of the graph ONNX Runtime actually runs (after its own fusions and layout changes): pointwise (1×1)
convolutions, depthwise convolutions, other convolutions, quantize/dequantize/layout nodes, and the rest. The
**bound** is the speed-up int8 would reach if everything but its convolutions took no time. Both builds are also
timed interleaved (``bench_timing.interleaved``), ``--samples`` times a minute apart: on this shared machine the
ratio moves with the load, so the table gives the median and the range. Writes ``bench/int8_kernels.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench_timing import demo_photo, interleaved, machine

from edgekit import convert
from edgekit.demo import demo_options

KINDS = ("pointwise conv", "depthwise conv", "other conv", "quantize / layout", "other")
LAYOUT = {"QuantizeLinear", "DequantizeLinear", "Transpose", "ReorderInput", "ReorderOutput"}


def _kinds(optimized: Path) -> dict[str, str]:
    """{node name: kind} of ONNX Runtime's optimized graph."""
    import onnx

    graph = onnx.load(str(optimized)).graph
    dims = {t.name: list(t.dims) for t in graph.initializer}
    kinds = {}
    for node in graph.node:
        kind = "quantize / layout" if node.op_type in LAYOUT else "other"
        if node.op_type in ("Conv", "QLinearConv"):
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            weight = dims.get(node.input[3 if node.op_type == "QLinearConv" else 1], [])
            pointwise = group == 1 and weight[2:] == [1, 1]
            kind = "depthwise conv" if group > 1 else "pointwise conv" if pointwise else "other conv"
        kinds[node.name] = kind
    return kinds


def _profile(models: dict[str, Path], image, repeats: int, block: int, tmp: Path) -> dict[str, dict]:
    """Mean kernel time (ms) per kind of layer over ``repeats`` inferences of each model, profiled in alternating
    blocks of ``block`` inferences (a burst of load on this shared machine hits both alike)."""
    import onnxruntime as ort

    def session(model: Path, **settings):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = os.cpu_count() or 1
        opts.inter_op_num_threads = 1
        for key, value in settings.items():
            setattr(opts, key, value)
        return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])

    kinds, profiled, feeds = {}, {}, {}
    for key, model in models.items():
        optimized = tmp / f"{model.stem}_optimized.onnx"
        session(model, optimized_model_filepath=str(optimized))
        kinds[key] = _kinds(optimized)
        profiled[key] = session(model, enable_profiling=True, profile_file_prefix=str(tmp / model.stem))
        feeds[key] = {profiled[key].get_inputs()[0].name: image}
        for _ in range(5):
            profiled[key].run(None, feeds[key])
    for _ in range(0, repeats, block):
        for key, sess in profiled.items():
            for _ in range(block):
                sess.run(None, feeds[key])
    result = {}
    for key, sess in profiled.items():
        events = json.loads(Path(sess.end_profiling()).read_text())
        runs = sorted(e["ts"] + e["dur"] for e in events if e.get("name") == "model_run")
        sums: dict[str, float] = defaultdict(float)
        for event in events:  # the 5 warm-up inferences left out
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] > runs[4]:
                kind = kinds[key].get(event["name"][: -len("_kernel_time")], "other")
                sums[kind] += event["dur"] / 1000 / (len(runs) - 5)
        result[key] = {kind: sums.get(kind, 0.0) for kind in KINDS}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="host")
    parser.add_argument("--repeats", type=int, default=60, help="profiled inferences per build")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--samples", type=int, default=5, help="interleaved timings, a minute apart")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    image = demo_photo(args.target)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        build = demo_options(
            args.target, out, "crops", precisions=("fp32", "int8"), backends=("onnxruntime",), device="host", runs=3
        )
        report = convert(build, log=lambda message: None)
        quantization = next(b["quantization"] for b in report["builds"] if b["precision"] == "int8")
        models, folders = {}, []
        for precision in ("fp32", "int8"):
            folder = out / f"onnxruntime_{precision}"
            manifest = json.loads((folder / "build.json").read_text())
            models[precision] = folder / manifest["artifacts"]["model"]
            folders.append((precision, folder))
        kernels = _profile(models, image, args.repeats, args.block, Path(tmp))
        samples = []
        for i in range(args.samples):
            time.sleep(60 if i else 0)
            samples.append(interleaved(folders, image, args.rounds, args.block))
    ratios = sorted(s["fp32"] / s["int8"] for s in samples)
    convs = sum(kernels["int8"][k] for k in KINDS if k.endswith("conv"))
    results = {
        "machine": machine(),
        "target": args.target,
        "int8_quantization": quantization,
        "profiled": f"ONNX Runtime profiler, kernel time, mean of {args.repeats} inferences per build on one "
        f"calibration photo, in alternating blocks of {args.block}",
        "timing": f"interleaved: {args.rounds} rounds × {args.block} runs per build, median; "
        f"{args.samples} such timings a minute apart",
        "kernels_ms": kernels,
        "p50_ms": samples,
        "speed_up": statistics.median(ratios),
        "speed_up_range": [ratios[0], ratios[-1]],
        "bound_if_only_convolutions_took_time": sum(kernels["fp32"].values()) / convs,
    }
    (args.out / "int8_kernels.json").write_text(json.dumps(results, indent=2))
    (args.out / "int8_kernels.md").write_text(_markdown(results))
    print(_markdown(results))


def _markdown(results: dict) -> str:
    fp32, int8 = results["kernels_ms"]["fp32"], results["kernels_ms"]["int8"]
    low, high = results["speed_up_range"]
    lines = [
        f"# ONNX Runtime int8 vs fp32 per kind of layer — EfficientNet-Lite0, target {results['target']}",
        "",
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, x86 without VNNI: "
        f"{results['machine']['x86_without_vnni']}. int8 build: {results['int8_quantization']}.",
        f"Kernel times: {results['profiled']}.",
        "",
        "| kind of layer | fp32 ms | int8 ms | int8 speed-up |",
        "|---|---|---|---|",
    ]
    for kind in [*KINDS, "total"]:
        a, b = (sum(fp32.values()), sum(int8.values())) if kind == "total" else (fp32[kind], int8[kind])
        speed = f"{a / b:.2f}×" if a and b else "—"
        lines.append(f"| {kind} | {a:.3f} | {b:.3f} | {speed} |")
    lines += [
        "",
        f"Timed {results['timing']}: fp32 {_spread([s['fp32'] for s in results['p50_ms']])} ms, int8 "
        f"{_spread([s['int8'] for s in results['p50_ms']])} ms; int8 speed-up median **{results['speed_up']:.2f}×** "
        f"({low:.2f}–{high:.2f}×). Bound if everything but the int8 convolutions took no time: "
        f"{results['bound_if_only_convolutions_took_time']:.2f}×.",
    ]
    return "\n".join(lines) + "\n"


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f}–{max(values):.2f}"


if __name__ == "__main__":
    main()
