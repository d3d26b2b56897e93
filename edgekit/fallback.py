"""Accuracy budget for int8: find the layers whose quantization costs the most and keep the fewest in float.

Everything is measured on the calibration data against the fp32 graph (never on the held-out data, which
stays for the final check). A shared graph made by NNCF goes to NNCF's own search,
``quantize_with_accuracy_control``: it quantizes the fp32 graph with the same settings, ranks its quantizer
groups by the agreement gained when each is removed, and removes them one by one until the budget is met.
For another quantizer's graph (``--quantizer ort``) edgekit searches itself: each quantized compute node
(Conv, Gemm, MatMul) is put back in float alone — its weights dequantized, its activation input and output
bypassing their Quantize/DequantizeLinear pairs — and nodes return to float in order of the agreement they
gain. Either way the result is a list of node names that every backend applies in its own way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.data import Dataset
from edgekit.errors import one_line
from edgekit.int8 import calib_method, quantizer
from edgekit.metrics import agreement, compare
from edgekit.onnx_hub import QuantConfig

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
    sensitivity: list[tuple[str, float]]  # edgekit's own search: each node's gain alone (NNCF's keeps none)
    search: str  # who chose the nodes


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
    quant: QuantConfig | None = None,
) -> FallbackResult:
    """Keep the fewest, most sensitive layers in float so that agreement with fp32 drops ≤ ``max_drop_points``
    (agreement of the class output ``task``: its index and whether it is a named per-step output); ``quant``:
    the settings the shared graph was made with."""
    import onnxruntime as ort

    feeds = [data.sample(i) for i in range(len(data))]
    ref_sess = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    ref_outs = [ref_sess.run(None, f) for f in feeds]
    reference = [np.concatenate([o[j] for o in ref_outs]) for j in range(len(ref_outs[0]))]
    model = onnx.load(str(qdq))
    base = _score(model, feeds, reference, task)
    floor = 1.0 - max_drop_points / 100.0
    sensitivity: list[tuple[str, float]] = []
    if base["agreement"] >= floor:
        kept, search = [], "none needed"
    else:
        kept, search = None, "edgekit's per-layer search"
        if calib_method(qdq) is not None:
            log("NNCF's accuracy control: ranking the int8 graph's quantizers on the calibration samples")
            try:
                still = _nncf_search(fp32, qdq, feeds, reference, max_drop_points, max_float, task, quant)
                kept = [name for name in quantized_compute_nodes(model) if name not in still]
                search = "NNCF's quantize_with_accuracy_control"
            except Exception as exc:  # NNCF's search fails on some graphs: edgekit's own still works
                search += f" (NNCF's accuracy control failed: {one_line(exc, 120)})"
        if kept is None:
            kept, sensitivity = _own_search(model, feeds, reference, base, floor, max_float, task, log)
    after = _score(float_nodes(model, set(kept)), feeds, reference, task) if kept else base
    met = after["agreement"] >= floor
    return FallbackResult(
        kept, base["agreement"], after["agreement"], base["cosine"], after["cosine"], met, sensitivity, search
    )


def _own_search(
    model: onnx.ModelProto,
    feeds: list[dict],
    reference: list[np.ndarray],
    base: dict,
    floor: float,
    max_float: int,
    task: tuple[int, bool],
    log: Callable[[str], None],
) -> tuple[list[str], list[tuple[str, float]]]:
    """Each quantized compute node's agreement gained alone, then greedy forward selection in that order."""
    nodes = quantized_compute_nodes(model)
    log(f"measuring the int8 sensitivity of {len(nodes)} layers on {len(feeds)} calibration samples")
    sensitivity = []
    for name in nodes:
        s = _score(float_nodes(model, {name}), feeds, reference, task)
        # Rank by agreement gained, then by cosine gained (agreement moves in coarse steps on few samples).
        sensitivity.append((name, s["agreement"] - base["agreement"] + (s["cosine"] - base["cosine"])))
    sensitivity.sort(key=lambda item: -item[1])
    # A layer stays float only if it helps in combination with the layers already chosen, so a budget that
    # cannot be met does not leave useless float layers behind.
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
    return kept, sensitivity


def _nncf_search(
    fp32: Path,
    qdq: Path,
    feeds: list[dict],
    reference: list[np.ndarray],
    max_drop_points: float,
    max_float: int,
    task: tuple[int, bool],
    quant: QuantConfig | None,
) -> set[str]:
    """The compute nodes NNCF's ``quantize_with_accuracy_control`` leaves quantized (the others it returned to
    float), quantizing ``fp32`` with the shared graph's settings (range estimator, first-layer bits) and scoring
    agreement with fp32 per calibration sample on the graph's arithmetic as written."""
    import nncf

    from edgekit.int8 import first_layer_bits, is_transformer, nncf_advanced, nncf_preset, nncf_quiet

    def validate(model: onnx.ModelProto, indices) -> tuple[float, list[float]]:
        outputs = simulated_outputs(model, [feeds[i] for i in indices])
        per_sample = []
        for k, i in enumerate(indices):
            acc = compare([r[i : i + 1] for r in reference], [o[k : k + 1] for o in outputs], None, *task)
            agreed = agreement(acc)[0]
            per_sample.append(acc["cosine"] if agreed is None else agreed)
        return float(np.mean(per_sample)), per_sample

    biases = quantizer(qdq)[1] or "none"  # fast where full bias correction failed on the graph
    settings = replace(quant or QuantConfig(), quantizer="nncf", method=calib_method(qdq), bias_correction=biases)
    advanced, _ = nncf_advanced(settings, first_layer_7bit=first_layer_bits(qdq) == 7)
    indices = nncf.Dataset(list(range(len(feeds))), lambda i: feeds[i])
    with nncf_quiet():
        result = nncf.quantize_with_accuracy_control(
            onnx.load(str(fp32)),
            indices,
            indices,
            validate,
            max_drop=max_drop_points / 100.0,
            drop_type=nncf.DropType.ABSOLUTE,
            preset=nncf_preset(settings),
            model_type=nncf.ModelType.TRANSFORMER if is_transformer(fp32) else None,
            subset_size=len(feeds),
            fast_bias_correction=settings.bias_correction != "full",
            advanced_quantization_parameters=advanced,
            # Each iteration returns one quantizer group (a layer and the quantizers it shares) to float.
            advanced_accuracy_restorer_parameters=nncf.AdvancedAccuracyRestorerParameters(
                max_num_iterations=max_float, num_ranking_workers=1
            ),
        )
    return set(quantized_compute_nodes(result))
