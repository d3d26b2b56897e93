"""Benchmark: where ONNX Runtime's int8 time goes, kernel by kernel, against its fp32 build of the same model.

    python bench/bench_int8_kernels.py [--target host] [--repeats 50] [--rounds 5] [--block 20] [--out bench]

Converts the demo's EfficientNet-Lite0 for ONNX Runtime in fp32 and int8 (edgekit's defaults), profiles both with
ONNX Runtime's profiler on one real calibration photo, and sums the kernel time per kind of layer of the graph
ONNX Runtime actually runs (after its own fusions and layout changes): pointwise (1×1) convolutions, depthwise
convolutions, other convolutions, quantize/dequantize/layout nodes, and the rest. The **bound** is the speed-up
int8 would reach if everything but its convolutions took no time. Both builds are also timed interleaved
(``bench_timing.interleaved``). Writes ``bench/int8_kernels.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
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


def _profile(model: Path, feed: dict, repeats: int, tmp: Path) -> dict[str, float]:
    """Mean kernel time (ms) per kind of layer over ``repeats`` inferences."""
    import onnxruntime as ort

    def session(**settings):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = os.cpu_count() or 1
        opts.inter_op_num_threads = 1
        for key, value in settings.items():
            setattr(opts, key, value)
        return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])

    optimized = tmp / f"{model.stem}_optimized.onnx"
    session(optimized_model_filepath=str(optimized))
    kinds = _kinds(optimized)
    profiled = session(enable_profiling=True, profile_file_prefix=str(tmp / model.stem))
    for _ in range(5 + repeats):
        profiled.run(None, feed)
    events = json.loads(Path(profiled.end_profiling()).read_text())
    runs = sorted(e["ts"] + e["dur"] for e in events if e.get("name") == "model_run")
    sums: dict[str, float] = defaultdict(float)
    for event in events:  # the 5 warm-up inferences left out
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] > runs[4]:
            sums[kinds.get(event["name"][: -len("_kernel_time")], "other")] += event["dur"] / 1000 / repeats
    return {kind: sums.get(kind, 0.0) for kind in KINDS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="host")
    parser.add_argument("--repeats", type=int, default=50, help="profiled inferences per build")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block", type=int, default=20)
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
        kernels, folders = {}, []
        for precision in ("fp32", "int8"):
            folder = out / f"onnxruntime_{precision}"
            manifest = json.loads((folder / "build.json").read_text())
            feed = {manifest["inputs"][0]["name"]: image}
            kernels[precision] = _profile(folder / manifest["artifacts"]["model"], feed, args.repeats, Path(tmp))
            folders.append((precision, folder))
        p50 = interleaved(folders, image, args.rounds, args.block)
    convs = sum(kernels["int8"][k] for k in KINDS if k.endswith("conv"))
    results = {
        "machine": machine(),
        "target": args.target,
        "int8_quantization": quantization,
        "profiled": f"ONNX Runtime profiler, kernel time, mean of {args.repeats} inferences on one calibration photo",
        "timing": f"interleaved: {args.rounds} rounds × {args.block} runs per build, median",
        "kernels_ms": kernels,
        "p50_ms": p50,
        "speed_up": p50["fp32"] / p50["int8"],
        "bound_if_only_convolutions_took_time": sum(kernels["fp32"].values()) / convs,
    }
    (args.out / "int8_kernels.json").write_text(json.dumps(results, indent=2))
    (args.out / "int8_kernels.md").write_text(_markdown(results))
    print(_markdown(results))


def _markdown(results: dict) -> str:
    fp32, int8 = results["kernels_ms"]["fp32"], results["kernels_ms"]["int8"]
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
        f"Timed {results['timing']}: fp32 {results['p50_ms']['fp32']:.2f} ms, int8 {results['p50_ms']['int8']:.2f} "
        f"ms, **{results['speed_up']:.2f}×**. Bound if everything but the int8 convolutions took no time: "
        f"{results['bound_if_only_convolutions_took_time']:.2f}×.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
