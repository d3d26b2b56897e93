"""The shared static int8 graph: NNCF post-training quantization of the ONNX graph with bias correction.

NNCF writes a standard QDQ graph (int8 weights, calibrated activation ranges, float biases corrected for the
shift that quantization causes in each layer's output). ONNX Runtime builds from it (on x86 without VNNI
from NNCF's 7-bit-weight graph, ``quantize_7bit``), TFLite takes its corrected biases (onnx2tf calibrates the
ranges itself), OpenVINO runs NNCF on its own IR with the same settings. ``--quantizer ort`` uses ONNX Runtime's
``quantize_static`` instead (no bias correction).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgekit.data import Dataset
from edgekit.errors import one_line
from edgekit.onnx_hub import QuantConfig, quantize_qdq

QUANTIZER_KEY = "edgekit.quantizer"  # metadata of the shared graph: how it was quantized, in words
BIASES_KEY = "edgekit.bias_correction"  # metadata: "full"/"fast" when its float biases are corrected
FIRST_LAYER_KEY = "edgekit.first_layer_bits"  # metadata: NNCF's first-layer weight bits, "8" or "7"
METHOD_KEY = "edgekit.calib_method"  # metadata: the activation range estimator NNCF used, "minmax" or "entropy"


def nncf_advanced(quant: QuantConfig, overflow_everywhere: bool = False, first_layer_7bit: bool = False):
    """NNCF's advanced parameters for a QuantConfig, and a note where NNCF has no exact equivalent.

    Activations are quantized per tensor: NNCF would quantize the inputs of depthwise convolutions per
    channel, which no CPU runtime's integer kernels take (ONNX Runtime then runs them in float, 3× slower).
    """
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        OverflowFix,
        QuantizationParameters,
    )
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    estimator = {
        "minmax": None,  # NNCF's default: the mean over samples of each sample's min and max
        "percentile": RangeEstimatorParametersSet.MEAN_QUANTILE,
        "entropy": RangeEstimatorParametersSet.HISTOGRAM,
    }[quant.method]
    note = {
        "minmax": "minmax calibration: NNCF's mean of per-sample minima and maxima",
        "percentile": "percentile calibration: NNCF's mean of per-sample quantiles",
        "entropy": "entropy calibration: NNCF has no KL-divergence estimator; its histogram (MSE) estimator is used",
    }.get(quant.method)
    advanced = AdvancedQuantizationParameters(
        overflow_fix=OverflowFix.ENABLE
        if overflow_everywhere
        else (OverflowFix.FIRST_LAYER if first_layer_7bit else OverflowFix.DISABLE),
        activations_range_estimator_params=estimator,
        activations_quantization_params=QuantizationParameters(per_channel=False),
        weights_quantization_params=QuantizationParameters(per_channel=quant.per_channel),
        disable_bias_correction=quant.bias_correction == "none",
    )
    return advanced, note


def nncf_preset(quant: QuantConfig):
    """NNCF's preset: symmetric activations (performance) or asymmetric ones (mixed)."""
    import nncf

    return nncf.QuantizationPreset.PERFORMANCE if quant.symmetric_activations else nncf.QuantizationPreset.MIXED


@contextlib.contextmanager
def nncf_quiet():
    """NNCF's progress bars and log kept off the terminal."""
    logging.getLogger("nncf").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def nncf_quantize(model, feeds: list[dict], quant: QuantConfig, advanced, ignored=None, transformer: bool = False):
    """``nncf.quantize`` with edgekit's settings, its progress bars and log kept off the terminal;
    ``transformer``: NNCF's transformer model type (see :func:`is_transformer`)."""
    import nncf

    with nncf_quiet():
        return nncf.quantize(
            model,
            nncf.Dataset(feeds),
            preset=nncf_preset(quant),
            subset_size=len(feeds),
            fast_bias_correction=quant.bias_correction != "full",
            model_type=nncf.ModelType.TRANSFORMER if transformer else None,
            ignored_scope=ignored,
            advanced_parameters=advanced,
        )


def is_transformer(graph: Path) -> bool:
    """Attention in the graph (a Softmax, and a MatMul of two activations): NNCF then quantizes it as a
    transformer — SmoothQuant moves activation outliers into the weights of the MatMuls they feed, and its
    transformer patterns keep LayerNorm, softmax and residual adds float. MiniLM-L6 static int8 (fast bias
    correction, 32 held-out sentences): cosine 0.9486 → 0.9973."""
    import onnx

    g = onnx.load(str(graph), load_external_data=False).graph
    constants = _constants(g)
    attention = any(n.op_type == "MatMul" and not constants.intersection(n.input) for n in g.node)
    return attention and any(n.op_type == "Softmax" for n in g.node)


def _constants(graph) -> set[str]:
    """Tensors that do not depend on a model input: initializers, Constant nodes, and what nodes compute from
    them alone (a weight's Transpose)."""
    constants = {t.name for t in graph.initializer}
    for node in graph.node:  # topologically sorted
        if all(i in constants for i in node.input if i):
            constants.update(node.output)
    return constants


def quantize_static(
    fp32: Path, out: Path, calib: Dataset, workdir: Path, quant: QuantConfig, advance: Callable[[int], None]
) -> Path:
    """The shared static int8 QDQ graph at ``out``, with how it was made in its metadata (``QUANTIZER_KEY``)."""
    import onnx

    ort = replace(quant, quantizer="ort", method="minmax" if quant.method == "auto" else quant.method)
    said, biases, props = f"ONNX Runtime quantize_static, {ort.describe()}", "", {}
    if quant.quantizer == "nncf":
        try:
            model, method, bits, used = _quantize_nncf(fp32, calib, quant)
        except Exception as exc:  # NNCF's graph matching fails on some graphs: ORT's quantizer still can
            said = f"NNCF failed ({one_line(exc, 160)}); {said} instead"
        else:
            advance(len(calib))
            chosen = used.describe()
            said = f"NNCF post-training quantization, {chosen}, {bits}-bit first-layer weights"
            if used.bias_correction != quant.bias_correction:
                said += f" ({quant.bias_correction} bias correction failed on this graph)"
            if is_transformer(fp32):
                said += ", as a transformer (SmoothQuant)"
            if quant.method == "auto":
                said += " (ranges and first-layer bits: the closest to the original on the calibration set)"
            biases, props = used.bias_correction, {FIRST_LAYER_KEY: str(bits), METHOD_KEY: method}
            onnx.save(model, str(out))
    if not biases:
        quantize_qdq(fp32, out, calib, workdir, ort, advance=advance)
    model = onnx.load(str(out))
    props = {QUANTIZER_KEY: said, **props, **({BIASES_KEY: biases} if biases != "none" else {})}
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(out))
    return out


def _quantize_nncf(fp32: Path, calib: Dataset, quant: QuantConfig) -> tuple:
    """NNCF's graph, its range estimator, its first layer's weight bits and the settings it was made with (fast
    bias correction where full failed): of the candidates, the one closest to the original on the calibration set
    (the worst output's mean cosine).

    Candidates: 8-bit and 7-bit first-layer weights, and with ``--calib-method auto`` NNCF's min/max and histogram
    (MSE) range estimators. NNCF's default 7-bit first layer guards u8×s8 kernels that saturate 16-bit sums (x86
    without VNNI), which ORT and OpenVINO builds there avoid with 7-bit weights everywhere; either bit width can
    be the more accurate one (EfficientNet-Lite0 demo crops cosine 0.986 with 7 bits vs 0.992 with 8, BlazeFace's
    scores 0.960 vs 0.920), and so can either estimator (EfficientNet-Lite0 with 8 bits: calibration set 0.9931
    min/max vs 0.9978 histogram, 240 held-out photos 0.9937 vs 0.9971).
    """
    import onnx

    from edgekit.fallback import simulated_outputs
    from edgekit.metrics import compare

    feeds = [calib.sample(i) for i in range(len(calib))]
    reference = simulated_outputs(onnx.load(str(fp32)), feeds)
    transformer = is_transformer(fp32)
    methods = ("minmax", "entropy") if quant.method == "auto" else (quant.method,)
    # NNCF's first layer is a convolution: without one, 7 and 8 bits are the same graph.
    ops = {n.op_type for n in onnx.load(str(fp32), load_external_data=False).graph.node}
    bits = (False, True) if ops & {"Conv", "ConvTranspose"} else (False,)
    best, error = None, None
    for method in methods:
        for seven in bits:
            try:
                model, used = _nncf_candidate(fp32, feeds, replace(quant, method=method), seven, transformer)
            except Exception as exc:  # one estimator failing on a graph leaves the others
                error = exc
                continue
            quant = replace(quant, bias_correction=used.bias_correction)  # full failed once: fast for the others
            score = compare(reference, simulated_outputs(model, feeds))["cosine"]
            score = -1.0 if np.isnan(score) else score
            if best is None or score > best[0]:
                best = (score, model, method, 7 if seven else 8, used)
    if best is None:
        raise error
    return best[1:]


def _nncf_candidate(fp32: Path, feeds: list[dict], quant: QuantConfig, seven: bool, transformer: bool) -> tuple:
    """One NNCF graph and the settings it was made with. NNCF's full bias correction cuts the graph into
    subgraphs, which fails on some graphs (MiniLM: "Duplicate definition-site"): its fast one-pass estimate is
    then used."""
    import onnx

    advanced, _ = nncf_advanced(quant, first_layer_7bit=seven)
    try:
        return nncf_quantize(onnx.load(str(fp32)), feeds, quant, advanced, transformer=transformer), quant
    except Exception:
        if quant.bias_correction != "full":
            raise
    fast = replace(quant, bias_correction="fast")
    advanced, _ = nncf_advanced(fast, first_layer_7bit=seven)
    return nncf_quantize(onnx.load(str(fp32)), feeds, fast, advanced, transformer=transformer), fast


def input_layers(graph: Path) -> list[str]:
    """The first convolutions and matmuls on each path from a model input, past any normalisation or layout
    ops computed from the inputs (and constants) alone — not past an op that also takes a layer's output, as an
    attention mask added to attention scores (ONNX node names, which OpenVINO keeps)."""
    import onnx

    from edgekit.fallback import COMPUTE_OPS

    g = onnx.load(str(graph), load_external_data=False).graph
    constants = _constants(g)
    reached = {i.name for i in g.input} - constants
    first = []
    for node in g.node:  # ONNX nodes are topologically sorted
        variable = [i for i in node.input if i and i not in constants]
        if node.op_type in COMPUTE_OPS:
            if reached.intersection(variable):
                first.append(node.name)
        elif variable and reached.issuperset(variable):
            reached.update(node.output)
    return first


def quantize_7bit(fp32: Path, shared: Path, calib: Dataset, quant: QuantConfig, float_nodes: tuple[str, ...] = ()):
    """A QDQ graph for int8 kernels that add pairs of u8×s8 products in saturating 16-bit sums (x86 without
    VNNI: AVX2's vpmaddubsw): NNCF with 7-bit weights (its overflow fix, which makes every such sum fit) in
    every layer but those fed by the model's inputs, kept float (7 bits cost most there and float little time),
    with the shared graph's range estimator and bias correction; the names of those input layers, and how it
    was made in words.

    EfficientNet-Lite0, 240 held-out photos: top-1 agreement 90.4 %, cosine 0.9915 (8-bit weights, exact:
    93.8 % / 0.9970; 7-bit weights in the input layer too: 89.6 % / 0.9887).
    """
    import nncf
    import onnx

    first = input_layers(fp32)
    method = quant.method if quant.method != "auto" else calib_method(shared) or "minmax"
    # The shared graph's bias correction: fast where full failed on this graph.
    settings = replace(quant, quantizer="nncf", method=method, bias_correction=quantizer(shared)[1] or "none")
    advanced, _ = nncf_advanced(settings, overflow_everywhere=True)
    feeds = [calib.sample(i) for i in range(len(calib))]
    ignored = nncf.IgnoredScope(names=[*first, *float_nodes], validate=False)
    said = f"NNCF post-training quantization, {settings.describe()}, 7-bit weights, {len(first)} input layer(s) float"
    transformer = is_transformer(fp32)
    if transformer:
        said += ", as a transformer (SmoothQuant)"
    return nncf_quantize(onnx.load(str(fp32)), feeds, settings, advanced, ignored, transformer), first, said


def _props(graph: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(graph), load_external_data=False).metadata_props}


def _prop(graph: Path | None, key: str) -> str | None:
    return _props(graph).get(key) if graph is not None and graph.exists() else None


def first_layer_bits(graph: Path | None) -> int | None:
    """The first-layer weight bits NNCF's shared graph chose (None: not made by NNCF)."""
    bits = _prop(graph, FIRST_LAYER_KEY)
    return int(bits) if bits else None


def calib_method(graph: Path | None) -> str | None:
    """The activation range estimator NNCF's shared graph used, "minmax" or "entropy" (None: not made by NNCF)."""
    return _prop(graph, METHOD_KEY)


def quantizer(graph: Path) -> tuple[str, str]:
    """How the shared graph was quantized, in words, and its bias correction ("" when none)."""
    props = _props(graph)
    return props.get(QUANTIZER_KEY, "ONNX Runtime quantization"), props.get(BIASES_KEY, "")


def to_u8u8(model):
    """The same QDQ graph with uint8 instead of int8 (values + 128, zero points + 128): exactly the same numbers.

    ONNX Runtime's x86 kernels without VNNI saturate 16-bit sums when weights are signed; with uint8 weights
    and activations (U8U8) they do not. (NNCF writes int8 for some activations and uint8 for others; ORT fuses
    a layer into its integer kernel only when its input and output types match, so U8U8 also fuses more.)
    """
    from onnx import TensorProto

    return _retype(model, TensorProto.INT8, weights=True)


def to_u8s8(model):
    """The same QDQ graph with uint8 activations everywhere (int8 values and zero points + 128; weights stay
    int8): ONNX Runtime's u8×s8 kernels, its fastest on x86 without VNNI. Exactly the same numbers."""
    from onnx import TensorProto

    return _retype(model, TensorProto.INT8, weights=False)


def to_s8s8(model):
    """The same QDQ graph with int8 activations everywhere (uint8 values and zero points - 128; weights stay int8).

    NNCF writes uint8 for most activations and int8 for signed ones; ONNX Runtime fuses a layer into its
    integer kernel only when its input and output types match, and on Arm its int8 kernels (S8S8, sdot) take
    signed activations. Exactly the same numbers.
    """
    from onnx import TensorProto

    return _retype(model, TensorProto.UINT8, weights=False)


def _retype(model, source: int, weights: bool):
    """Flip the 8-bit type of quantized tensors of type ``source`` (int8 <-> uint8, values shifted by 128);
    weights (dequantized initializers) only when ``weights``."""
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    step, target = (128, np.uint8) if source == TensorProto.INT8 else (-128, np.int8)
    shifted: set[str] = set()

    def shift(name: str) -> None:
        if name not in shifted:
            tensor = inits[name]
            value = numpy_helper.to_array(tensor).astype(np.int16) + step
            tensor.CopyFrom(numpy_helper.from_array(value.astype(target), name))
            shifted.add(name)

    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) >= 3]
    weight_zeros = {n.input[2] for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    retyped = set()
    for node in qdq:
        zero = inits.get(node.input[2])
        if zero is None or (zero.data_type != source and node.input[2] not in shifted):
            continue
        if not weights and node.input[2] in weight_zeros:
            continue  # a weight's zero point (or one shared with a weight) keeps its type
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            shift(node.input[0])  # a quantized weight
        shift(node.input[2])
        if node.op_type == "QuantizeLinear":
            retyped.add(node.output[0])
    keep = [v for v in graph.value_info if v.name not in retyped | shifted]  # their recorded type is the old one
    del graph.value_info[:]
    graph.value_info.extend(keep)
    return model


def quantize_biases(model):
    """Store the float biases of Conv/Gemm nodes fed by dequantized inputs and weights as int32 (scale: input
    scale × weight scale, the int32 accumulator's own), behind a DequantizeLinear.

    NNCF leaves biases in float; ONNX Runtime fuses a Gemm into its integer kernel (QGemm) only with an int32
    bias. The values change by at most half an accumulator step.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    _sink_dequantize(graph)
    inits = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    added = []
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[2] not in inits:
            continue
        x, w = producers.get(node.input[0]), producers.get(node.input[1])
        if x is None or w is None or {x.op_type, w.op_type} != {"DequantizeLinear"}:
            continue
        if x.input[1] not in inits or w.input[1] not in inits:
            continue
        x_scale = numpy_helper.to_array(inits[x.input[1]]).astype(np.float64)
        w_scale = numpy_helper.to_array(inits[w.input[1]]).astype(np.float64).reshape(-1)
        bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
        if x_scale.size != 1 or w_scale.size not in (1, bias.size):
            continue
        scale = np.broadcast_to(x_scale.reshape(()) * w_scale, bias.shape)
        value = np.clip(np.round(bias / scale), -(2**31), 2**31 - 1).astype(np.int32)
        name = node.input[2]
        parts = (f"{name}_int32", f"{name}_int32_scale", f"{name}_int32_zero_point")
        if parts[0] in inits:  # a bias shared with a node already rewritten: leave this one in float
            continue
        inits[parts[0]] = node
        graph.initializer.extend(
            [
                numpy_helper.from_array(value, parts[0]),
                numpy_helper.from_array(scale.astype(np.float32), parts[1]),
                numpy_helper.from_array(np.zeros(value.shape, np.int32), parts[2]),
            ]
        )
        added.append((node, helper.make_node("DequantizeLinear", list(parts), [f"{name}_dq"], f"{name}_dq", axis=0)))
        node.input[2] = f"{name}_dq"
    for node, dq in added:
        graph.node.insert(list(graph.node).index(node), dq)
    used = {name for node in graph.node for name in node.input}
    unused = [t for t in graph.initializer if t.name not in used]
    for tensor in unused:
        graph.initializer.remove(tensor)
    return model


SHAPE_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


def _sink_dequantize(graph) -> None:
    """Move a per-tensor DequantizeLinear below a shape-only op (Reshape, Flatten, …) that feeds a Conv or Gemm,
    so the layer sees a dequantized input and can fuse (NNCF quantizes a classifier's input before its Flatten).
    Exactly the same numbers: reshaping commutes with per-tensor dequantization."""
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    moved = set()
    for node in list(graph.node):
        if node.op_type not in ("Conv", "Gemm"):
            continue
        shape = producers.get(node.input[0])
        if shape is None or shape.op_type not in SHAPE_OPS or consumers.get(shape.output[0]) != 1:
            continue
        dq = producers.get(shape.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or consumers.get(dq.output[0]) != 1:
            continue
        if dq.input[1] not in inits or numpy_helper.to_array(inits[dq.input[1]]).size != 1:
            continue
        # DQ(q) -> Reshape -> layer   becomes   q -> Reshape -> DQ -> layer (the tensors keep their names)
        quantized, dequantized, reshaped = dq.input[0], dq.output[0], shape.output[0]
        shape.input[0], shape.output[0] = quantized, dequantized
        dq.input[0], dq.output[0] = dequantized, reshaped
        nodes = list(graph.node)
        graph.node.remove(dq)
        graph.node.insert(nodes.index(shape), dq)
        moved.add(dequantized)  # now the reshaped quantized tensor: its recorded float type is stale
    kept = [v for v in graph.value_info if v.name not in moved]
    del graph.value_info[:]
    graph.value_info.extend(kept)


def with_corrected_biases(fp32: Path, qdq: Path, out: Path) -> int:
    """Write ``fp32`` with the float biases NNCF corrected in ``qdq`` (matched by node name); how many."""
    import onnx
    from onnx import numpy_helper

    model, corrected = onnx.load(str(fp32)), onnx.load(str(qdq))
    source = {t.name: t for t in corrected.graph.initializer}
    nodes = {n.name: n for n in corrected.graph.node}
    inits = {t.name: t for t in model.graph.initializer}
    count = 0
    for node in model.graph.node:
        twin = nodes.get(node.name)
        if node.op_type not in ("Conv", "Gemm", "ConvTranspose") or len(node.input) < 3 or twin is None:
            continue
        if len(twin.input) < 3 or twin.input[2] not in source or node.input[2] not in inits:
            continue
        old, new = numpy_helper.to_array(inits[node.input[2]]), numpy_helper.to_array(source[twin.input[2]])
        if old.shape == new.shape and new.dtype.kind == "f" and not np.array_equal(old, new):
            inits[node.input[2]].CopyFrom(numpy_helper.from_array(new.astype(old.dtype), node.input[2]))
            count += 1
    onnx.save(model, str(out))
    return count
