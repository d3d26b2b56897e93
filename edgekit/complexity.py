"""MACs and parameter counts of a PyTorch module (torch's FlopCounterMode) or an ONNX graph (static shapes).

Both count only the multiply-accumulates of convolutions and matrix products (Conv, ConvTranspose, Gemm,
MatMul, and in PyTorch also attention kernels); bias adds, normalisation, activations and other
element-wise ops are not counted. Both raise ``ValueError`` for a model they cannot count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx
    import torch

COUNTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
FOLD_MAX_ELEMENTS = 4096  # constant subgraphs folded before shape inference: shapes, pads, axes


def torch_macs_params(module: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> tuple[int, int]:
    """MACs of one forward pass on ``example`` (FlopCounterMode's FLOPs // 2, plus matrix-vector products)
    and the number of parameter elements (shared tensors once). Putting ``module`` in eval mode is the caller's
    job."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    counter = FlopCounterMode(display=False, custom_mapping={aten.mv: _vector_flops, aten.dot: _vector_flops})
    try:
        with torch.no_grad(), counter:
            module(*example)
    except Exception as e:  # whatever the forward pass raises, the caller gets "cannot count"
        raise ValueError(f"cannot run the model to count its MACs: {type(e).__name__}: {e}") from e
    return counter.get_total_flops() // 2, sum(p.numel() for p in module.parameters())


def _vector_flops(a_shape: tuple[int, ...], *args, out_shape: tuple[int, ...] | None = None, **kwargs) -> int:
    """FLOPs of matrix-vector and dot products (``A @ v``, ``u @ v``), which FlopCounterMode leaves out."""
    return 2 * math.prod(a_shape)


def onnx_macs_params(path: Path, input_shapes: Mapping[str, Sequence[int]] | None = None) -> tuple[int, int]:
    """MACs of one run of the ONNX graph at ``path`` and its parameter count.

    MACs come from inferred static shapes: Conv ``prod(Y) * Cin/groups * prod(kernel)``, ConvTranspose
    ``prod(X) * Cout/groups * prod(kernel)``, Gemm ``M * N * K``, MatMul ``prod(Y) * K`` (batched,
    broadcasting); int8 QDQ graphs count the same, weight shapes flow through DequantizeLinear.
    ``input_shapes`` fixes dynamic graph inputs (e.g. ``{"input": (1, 3, 224, 224)}``).

    Parameters are the elements of every initializer with at least 2 elements that is floating point or
    dequantized by a DequantizeLinear (int8 weights, int32 biases), not counting quantization scales and
    zero points. An exported graph has BatchNorm folded into its convolutions, so this can be lower than
    the PyTorch module's count.

    Raises ``ValueError`` when a counted node's shapes are not static, or the graph has control flow.
    """
    import onnx
    import onnx.inliner

    model = onnx.load(str(path), load_external_data=False)
    if input_shapes:
        _fix_input_shapes(model.graph, input_shapes)
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    graph = model.graph
    control = sorted({n.op_type for n in graph.node if _has_subgraph(n)})
    if control:
        raise ValueError(f"cannot count MACs of a graph with control flow ({', '.join(control)})")
    params = _params(graph)
    _fold_small_constants(graph)
    try:
        graph = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    except onnx.shape_inference.InferenceError as e:
        raise ValueError(f"ONNX shape inference failed: {e}") from e
    shapes = _static_shapes(graph)
    macs = sum(_node_macs(n, shapes) for n in graph.node if n.op_type in COUNTED_OPS and _standard(n))
    return macs, params


def _standard(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


def _has_subgraph(node: onnx.NodeProto) -> bool:
    import onnx

    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _params(graph: onnx.GraphProto) -> int:
    """Elements of the parameter initializers (see ``onnx_macs_params``)."""
    import onnx

    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    scales = {name for n in qdq for name in n.input[1:]}
    dequantized = {n.input[0] for n in qdq if n.op_type == "DequantizeLinear"}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    return sum(
        math.prod(t.dims)
        for t in graph.initializer
        if math.prod(t.dims) >= 2 and t.name not in scales and (t.data_type in floats or t.name in dequantized)
    )


def _fold_small_constants(graph: onnx.GraphProto) -> None:
    """Replace nodes computed from small constants only (e.g. the pads of a TensorFlow 'SAME' Pad, which the
    TorchScript exporter leaves as Constant → Slice → Transpose → Cast) by initializers, so that shape
    inference sees their values."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    values = {
        t.name: numpy_helper.to_array(t)
        for t in graph.initializer
        if t.data_location != onnx.TensorProto.EXTERNAL and math.prod(t.dims) <= FOLD_MAX_ELEMENTS
    }
    kept, folded = [], []
    for node in graph.node:
        foldable = _standard(node) and node.op_type not in COUNTED_OPS and not _has_subgraph(node)
        if foldable and all(not i or i in values for i in node.input):
            try:
                outputs = ReferenceEvaluator(node).run(None, {i: values[i] for i in node.input if i})
            except Exception:  # an op the reference evaluator lacks: leave the node to shape inference
                outputs = None
            if outputs is not None and all(np.asarray(o).size <= FOLD_MAX_ELEMENTS for o in outputs):
                for name, value in zip(node.output, outputs, strict=False):
                    values[name] = np.asarray(value)  # an unused optional output ("") is harmless
                    folded.append(numpy_helper.from_array(values[name], name))
                continue
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(folded)


def _fix_input_shapes(graph: onnx.GraphProto, input_shapes: Mapping[str, Sequence[int]]) -> None:
    inputs = {i.name: i for i in graph.input}
    for name, shape in input_shapes.items():
        if name not in inputs:
            raise ValueError(f"'{name}' is not an input of the ONNX graph (inputs: {', '.join(inputs)})")
        dims = inputs[name].type.tensor_type.shape.dim
        del dims[:]
        for d in shape:
            dims.add().dim_value = int(d)


def _static_shapes(graph: onnx.GraphProto) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape, for every tensor whose dimensions are all known."""
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    for v in (*graph.input, *graph.value_info, *graph.output):
        tensor = v.type.tensor_type
        if tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim):
            shapes[v.name] = tuple(d.dim_value for d in tensor.shape.dim)
    return shapes


def _node_macs(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int:
    def shape(name: str) -> tuple[int, ...]:
        if name not in shapes:
            raise ValueError(
                f"{node.op_type} node '{node.name}': the shape of '{name}' is not static "
                "(give the graph inputs fixed shapes)"
            )
        return shapes[name]

    x, w, y = node.input[0], node.input[1], node.output[0]
    if node.op_type == "Conv":
        return math.prod(shape(y)) * math.prod(shape(w)[1:])
    if node.op_type == "ConvTranspose":
        return math.prod(shape(x)) * math.prod(shape(w)[1:])
    if node.op_type == "MatMul":
        return math.prod(shape(y)) * shape(x)[-1]
    trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)  # Gemm: Y (M, N), A (M, K) or (K, M)
    return math.prod(shape(y)) * shape(x)[0 if trans_a else 1]
