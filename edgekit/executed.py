"""Silent-fallback check: which compute layers of an "int8" build really run in int8.

ONNX Runtime: the graph after ORT's own optimizations (QDQ pairs fused into QLinear/Integer kernels, or
left around float kernels); TFLite: the tensor types feeding each compute op; OpenVINO: the runtime
precision the device's plugin reported per layer; TVM: what its ONNX frontend lowers (QDQ graphs are
dequantized to float kernels, integer MatMuls stay integer).
"""

from __future__ import annotations

from pathlib import Path

INT8_ONNX_OPS = {
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
    "QGemm",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
}
FLOAT_ONNX_OPS = {"Conv", "FusedConv", "ConvTranspose", "MatMul", "FusedMatMul", "Gemm", "FusedGemm"}
TFLITE_COMPUTE = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV", "CONV_3D"}
OV_INT8 = {"i8", "u8"}


def summary(int8: int, floating: int, source: str) -> dict:
    total = int8 + floating
    share = int8 / total if total else 0.0
    return {
        "int8_compute_layers": int8,
        "float_compute_layers": floating,
        "int8_share": share,
        "mostly_float": total > 0 and share < 0.5,
        "source": source,
    }


def _onnx_counts(model) -> tuple[int, int]:
    ops = [n.op_type for n in model.graph.node]
    return sum(op in INT8_ONNX_OPS for op in ops), sum(op in FLOAT_ONNX_OPS for op in ops)


def onnxruntime_execution(model_path: Path, work: Path) -> dict:
    """Count int8 vs float compute kernels in the graph ORT runs after its optimizations."""
    import onnx
    import onnxruntime as ort

    optimized = work / "ort_optimized.onnx"
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    return summary(*_onnx_counts(onnx.load(str(optimized))), "ONNX Runtime graph after optimization (this host)")


def tflite_execution(model_path: Path) -> dict:
    """Compute ops whose activation or weight tensors are 8-bit (full-integer or dynamic-range kernels)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(model_path))
    types = {t["index"]: t["dtype"].__name__ for t in interp.get_tensor_details()}
    int8 = floating = 0
    for op in interp._get_ops_details():  # LiteRT's only op listing API
        if op["op_name"] not in TFLITE_COMPUTE:
            continue
        inputs = [types.get(i, "") for i in op["inputs"][:2] if i >= 0]
        if any(t in ("int8", "uint8") for t in inputs):
            int8 += 1
        else:
            floating += 1
    return summary(int8, floating, "TFLite tensor types of compute ops")


def openvino_execution(runtime_precisions: dict[str, int]) -> dict:
    """From the device's runtime precisions (all executed layers, as OpenVINO reports them)."""
    int8 = sum(n for p, n in runtime_precisions.items() if p in OV_INT8)
    return summary(int8, sum(runtime_precisions.values()) - int8, "OpenVINO runtime precision per executed layer")


def tvm_execution(graph: Path) -> dict:
    """TVM's ONNX frontend dequantizes QDQ weights/activations to float kernels; integer MatMuls stay integer."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    return summary(*_onnx_counts(model), "TVM Relax lowering of the int8 ONNX graph")
