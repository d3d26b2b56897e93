"""Silent-fallback check: which compute layers of an "int8" build really run in int8.

Each backend counts its own (``Converter.executed``): ONNX Runtime the graph after its optimizations,
TFLite the tensor types feeding each compute op, OpenVINO the runtime precision its plugin reports per
layer, TVM what its ONNX frontend lowers. This module holds what they share.
"""

from __future__ import annotations

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


def summary(int8: int, floating: int, source: str, float_kinds: dict[str, int] | None = None) -> dict:
    """``precision``: int8 when every compute layer runs in int8, mixed when some do, float when none do;
    ``float_kinds``: the float compute layers by kind and precision, where the backend can tell."""
    total = int8 + floating
    share = int8 / total if total else 0.0
    said = {
        "int8_compute_layers": int8,
        "float_compute_layers": floating,
        "int8_share": share,
        "precision": "int8" if floating == 0 else ("float" if int8 == 0 else "mixed"),
        "mostly_float": total > 0 and share < 0.5,
        "source": source,
    }
    if float_kinds:
        said["float_kinds"] = float_kinds
    return said


def onnx_kernels(counts: dict[str, int]) -> tuple[int, dict[str, int]]:
    """ONNX (Runtime) op counts → int8 compute layers and the float ones by op."""
    int8 = sum(n for op, n in counts.items() if op in INT8_ONNX_OPS)
    return int8, {op: n for op, n in counts.items() if op in FLOAT_ONNX_OPS}


def onnx_counts(model) -> tuple[int, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    int8, floating = onnx_kernels(counts)
    return int8, sum(floating.values())
