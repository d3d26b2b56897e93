"""Accuracy budget for int8: find the layers whose quantization costs the most and keep the fewest in float.

Sensitivity is measured on the calibration data against the fp32 graph (never on the held-out data,
which stays for the final check): each quantized compute node (Conv, Gemm, MatMul) is put back in
float alone in the QDQ graph — its weights are dequantized and its activation input and output
bypass their Quantize/DequantizeLinear pairs — and the gain in agreement with fp32 is that node's
sensitivity.
Nodes are then returned to float in order of sensitivity until the budget is met.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.data import Dataset
from edgekit.metrics import agreement, compare

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def float_nodes(model: onnx.ModelProto, names: set[str]) -> onnx.ModelProto:
    """A copy of the QDQ ``model`` in which the nodes ``names`` compute in float."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    inits = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.name not in names:
            continue
        for i, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            source = dq.input[0]
            if source in inits:  # a quantized weight or bias: store its float value
                value = _dequantize(dq, inits)
                float_name = f"{source}_float"
                if float_name not in inits:
                    tensor = numpy_helper.from_array(value, float_name)
                    graph.initializer.append(tensor)
                    inits[float_name] = tensor
                node.input[i] = float_name
            elif producers.get(source) is not None and producers[source].op_type == "QuantizeLinear":
                node.input[i] = producers[source].input[0]  # skip the activation's Q/DQ pair
        _bypass_output_pairs(graph, node)
    return model


def _bypass_output_pairs(graph: onnx.GraphProto, node: onnx.NodeProto) -> None:
    """Let consumers of ``node``'s quantized outputs read the float outputs instead (graph outputs excepted)."""
    graph_outputs = {o.name for o in graph.output}
    for out in node.output:
        for q in [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == out]:
            for dq in [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0]]:
                if dq.output[0] in graph_outputs:
                    continue
                for consumer in graph.node:
                    consumer.input[:] = [out if name == dq.output[0] else name for name in consumer.input]


def _dequantize(dq: onnx.NodeProto, inits: dict) -> np.ndarray:
    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
    zero = numpy_helper.to_array(inits[dq.input[2]]).astype(np.float32) if len(dq.input) > 2 else np.float32(0)
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), np.reshape(zero, shape) if np.ndim(zero) else zero
    return ((q - zero) * scale).astype(np.float32)


def quantized_compute_nodes(model: onnx.ModelProto) -> list[str]:
    """Compute nodes fed by at least one DequantizeLinear: the layers that run in int8."""
    producers = {out: node for node in model.graph.node for out in node.output}
    return [
        n.name
        for n in model.graph.node
        if n.op_type in COMPUTE_OPS
        and any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in n.input)
    ]


@dataclass
class FallbackResult:
    """Which nodes stay in float, what the check data said before and after, and the per-node sensitivity."""

    kept_float: list[str]
    agreement_before: float
    agreement_after: float
    cosine_before: float
    cosine_after: float
    met: bool
    sensitivity: list[tuple[str, float]]


def simulated_outputs(model: onnx.ModelProto, feeds: list[dict]) -> list[np.ndarray]:
    """Every output of ``model`` on ``feeds`` (concatenated), a QDQ graph's arithmetic as written (Q/DQ around
    float kernels, no ORT optimization): the quantization error every backend shares, free of one host's int8
    kernel quirks (ORT's AVX2 u8s8 saturation)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outs = [sess.run(None, f) for f in feeds]
    return [np.concatenate([o[j] for o in outs]) for j in range(len(outs[0]))]


def _score(model: onnx.ModelProto, feeds: list[dict], reference: list[np.ndarray], task: tuple[int, bool]) -> dict:
    """Agreement of the QDQ graph, simulated (``simulated_outputs``)."""
    acc = compare(reference, simulated_outputs(model, feeds), None, *task)
    agreed = agreement(acc)[0]
    return {"agreement": acc["cosine"] if agreed is None else agreed, "cosine": acc["cosine"]}


def find_fallback(
    fp32: Path,
    qdq: Path,
    data: Dataset,
    max_drop_points: float,
    log: Callable[[str], None] = lambda m: None,
    max_float: int = 12,
    task: tuple[int, bool] = (0, False),
) -> FallbackResult:
    """Keep the fewest, most sensitive layers in float so that agreement with fp32 drops ≤ ``max_drop_points``
    (agreement of the class output ``task``: its index and whether it is a named per-step output)."""
    import onnxruntime as ort

    feeds = [data.sample(i) for i in range(len(data))]
    ref_sess = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    ref_outs = [ref_sess.run(None, f) for f in feeds]
    reference = [np.concatenate([o[j] for o in ref_outs]) for j in range(len(ref_outs[0]))]
    model = onnx.load(str(qdq))
    base = _score(model, feeds, reference, task)
    floor = 1.0 - max_drop_points / 100.0
    if base["agreement"] >= floor:
        return FallbackResult([], base["agreement"], base["agreement"], base["cosine"], base["cosine"], True, [])
    nodes = quantized_compute_nodes(model)
    log(f"measuring the int8 sensitivity of {len(nodes)} layers on {len(feeds)} calibration samples")
    sensitivity = []
    for name in nodes:
        s = _score(float_nodes(model, {name}), feeds, reference, task)
        # Rank by agreement gained, then by cosine gained (agreement moves in coarse steps on few samples).
        sensitivity.append((name, s["agreement"] - base["agreement"] + (s["cosine"] - base["cosine"])))
    sensitivity.sort(key=lambda item: -item[1])
    # Greedy forward selection in sensitivity order: a layer stays float only if it helps in combination with
    # the layers already chosen, so a budget that cannot be met does not leave useless float layers behind.
    kept: list[str] = []
    current = base
    for name, _ in sensitivity[:max_float]:
        trial = _score(float_nodes(model, {*kept, name}), feeds, reference, task)
        if trial["agreement"] + trial["cosine"] <= current["agreement"] + current["cosine"]:
            continue
        kept.append(name)
        current = trial
        if current["agreement"] >= floor:
            break
    return FallbackResult(
        kept,
        base["agreement"],
        current["agreement"],
        base["cosine"],
        current["cosine"],
        current["agreement"] >= floor,
        sensitivity,
    )
