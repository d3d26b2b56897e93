"""The shared static int8 graph: NNCF with bias correction, exact U8U8 and S8S8 rewrites, corrected biases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from edgekit import fallback, int8, metrics
from edgekit.data import Dataset, TensorSpec
from edgekit.errors import EdgekitError
from edgekit.onnx_hub import QuantConfig, export_onnx
from edgekit.source import SourceModel
from tests.conftest import N_TRAIN


def _cosine(reference: list[np.ndarray], graph, feeds: list[dict]) -> float:
    """The worst output's mean cosine of the QDQ graph as written, as the quantizer scores its candidates."""
    return float(metrics.compare(reference, fallback.simulated_outputs(onnx.load(str(graph)), feeds))["cosine"])


def _exact(path, x: np.ndarray) -> np.ndarray:
    """The graph's outputs with every ORT optimization off: QDQ arithmetic as written, no host int8 kernel."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, cnn_case, digits):
    """The trained digits CNN in ONNX, and its int8 graphs from NNCF (full bias correction) and from ORT."""
    x, _ = digits
    root = tmp_path_factory.mktemp("int8")
    source = SourceModel("pytorch", "digits CNN", 0, module=cnn_case["model"].eval(), input_names=["input"])
    fp32 = export_onnx(source, [TensorSpec("input", (1, 1, 8, 8), "float32")], root / "fp32.onnx")
    calib = Dataset({"input": x[:128]}, None, "digits")
    made = {"fp32": fp32}
    for name, quant in (("nncf", QuantConfig()), ("ort", QuantConfig(quantizer="ort"))):
        made[name] = int8.quantize_static(fp32, root / f"{name}.onnx", calib, root, quant, lambda n: None)
    return made


def test_nncf_graph_says_how_it_was_made_and_keeps_digits_accuracy(graphs, digits):
    x, y = digits
    held_out, labels = x[N_TRAIN:], y[N_TRAIN:]
    how, biases = int8.quantizer(graphs["nncf"])
    assert how.startswith("NNCF post-training quantization") and "full bias correction" in how and biases == "full"
    assert int8.quantizer(graphs["ort"]) == (
        "ONNX Runtime quantize_static, minmax calibration, per-channel weights, asymmetric activations",
        "",
    )
    fp32 = (_exact(graphs["fp32"], held_out).argmax(1) == labels).mean()
    nncf = (_exact(graphs["nncf"], held_out).argmax(1) == labels).mean()
    assert nncf >= fp32 - 0.005, (fp32, nncf)  # the bar: ≤ 0.5 pt of labelled accuracy lost
    # int8 weights are stored as int8 initializers (a quarter of the float size), activations per tensor.
    model = onnx.load(str(graphs["nncf"]))
    inits = {t.name: t for t in model.graph.initializer}
    weights = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert weights and all(inits[n.input[0]].data_type == TensorProto.INT8 for n in weights)
    for q in (n for n in model.graph.node if n.op_type == "QuantizeLinear"):
        assert numpy_helper.to_array(inits[q.input[1]]).size == 1, q.name
    # The first layer's weights: 8-bit or NNCF's 7-bit, whichever was closer to the original on the calibration
    # set; the graph and its description say which, and the stored weights have that range.
    bits = int8.first_layer_bits(graphs["nncf"])
    assert bits in (7, 8) and f"{bits}-bit first-layer weights" in how
    producers = {o: n for n in model.graph.node for o in n.output}
    stem = next(n for n in model.graph.node if n.op_type == "Conv")
    assert (np.abs(numpy_helper.to_array(inits[producers[stem.input[1]].input[0]])).max() > 64) == (bits == 8)
    assert int8.first_layer_bits(graphs["ort"]) is None
    method = int8.calib_method(graphs["nncf"])
    assert method in ("minmax", "entropy") and f"{method} calibration" in how and "calibration set" in how
    assert int8.calib_method(graphs["ort"]) is None


def test_auto_calibration_keeps_the_closest_of_the_range_estimators(graphs, digits, tmp_path, monkeypatch):
    """``auto`` tries NNCF's min/max and histogram ranges; an explicit method is used as asked."""
    calib = Dataset({"input": digits[0][:128]}, None, "digits")
    tried, quantize = [], int8.nncf_quantize

    def spy(model, feeds, quant, advanced, ignored=None, transformer=False):
        tried.append(quant.method)
        return quantize(model, feeds, quant, advanced, ignored, transformer)

    monkeypatch.setattr(int8, "nncf_quantize", spy)
    int8.quantize_static(graphs["fp32"], tmp_path / "auto.onnx", calib, tmp_path, QuantConfig(), lambda n: None)
    assert sorted(tried) == ["entropy", "entropy", "minmax", "minmax"]  # each with 8- and 7-bit first-layer weights
    tried.clear()
    feeds = [calib.sample(i) for i in range(len(calib))]
    reference = fallback.simulated_outputs(onnx.load(str(graphs["fp32"])), feeds)
    cosine = {}
    for method in ("minmax", "entropy"):
        out = int8.quantize_static(
            graphs["fp32"], tmp_path / f"{method}.onnx", calib, tmp_path, QuantConfig(method=method), lambda n: None
        )
        assert int8.calib_method(out) == method and f"{method} calibration" in int8.quantizer(out)[0]
        assert tried == [method, method]
        tried.clear()
        cosine[method] = _cosine(reference, out, feeds)
    cosine["auto"] = _cosine(reference, graphs["nncf"], feeds)
    assert cosine["auto"] >= max(cosine["minmax"], cosine["entropy"]) - 1e-6, cosine


def test_u8u8_rewrite_gives_exactly_the_same_numbers(graphs, digits, tmp_path):
    x = digits[0][N_TRAIN : N_TRAIN + 64]
    for name in ("nncf", "ort"):
        model = int8.to_u8u8(onnx.load(str(graphs[name])))
        inits = {t.name: t for t in model.graph.initializer}
        qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        types = {inits[n.input[2]].data_type for n in qdq}
        assert TensorProto.UINT8 in types and TensorProto.INT8 not in types  # (ORT's biases stay int32)
        onnx.shape_inference.infer_shapes(model, strict_mode=True)  # no stale int8 in its recorded types
        onnx.save(model, str(tmp_path / f"{name}_u8.onnx"))
        np.testing.assert_array_equal(_exact(tmp_path / f"{name}_u8.onnx", x), _exact(graphs[name], x))


def test_s8s8_rewrite_gives_exactly_the_same_numbers_with_signed_activations(graphs, digits, tmp_path):
    x = digits[0][N_TRAIN : N_TRAIN + 64]
    for name in ("nncf", "ort"):
        before = onnx.load(str(graphs[name]))
        weights_before = {t.name: numpy_helper.to_array(t) for t in before.graph.initializer}
        model = int8.to_s8s8(before)
        inits = {t.name: t for t in model.graph.initializer}
        qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        types = {inits[n.input[2]].data_type for n in qdq}
        assert TensorProto.INT8 in types and TensorProto.UINT8 not in types  # (ORT's biases stay int32)
        for n in qdq:
            if n.input[0] in inits:  # weights are untouched
                np.testing.assert_array_equal(numpy_helper.to_array(inits[n.input[0]]), weights_before[n.input[0]])
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.save(model, str(tmp_path / f"{name}_s8.onnx"))
        np.testing.assert_array_equal(_exact(tmp_path / f"{name}_s8.onnx", x), _exact(graphs[name], x))


def test_int32_biases_let_onnx_runtime_fuse_every_layer_into_integer_kernels(graphs, digits, tmp_path):
    x = digits[0][N_TRAIN : N_TRAIN + 64]
    before = onnx.load(str(graphs["nncf"]))
    onnx.save(int8.quantize_biases(before), str(tmp_path / "biased.onnx"))
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tmp_path / "biased.onnx"), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops.count("QLinearConv") == 3 and ops.count("QGemm") == 1 and "Gemm" not in ops and "Conv" not in ops
    reference, rewritten = _exact(graphs["nncf"], x), _exact(tmp_path / "biased.onnx", x)
    # Bias rounding (≤ half an accumulator step) can flip an 8-bit activation by one step further on.
    assert np.abs(rewritten - reference).max() <= 0.02 * np.abs(reference).max()
    assert (rewritten.argmax(1) == reference.argmax(1)).mean() >= 0.98


def test_dequantize_moves_below_a_reshape_so_the_classifier_fuses(digits, tmp_path):
    """EfficientNet-style head (mean → view → Linear): NNCF quantizes the mean, before the reshape."""
    import torch

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(1, 8, 3), torch.nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean((2, 3), keepdim=True).view(x.shape[0], -1))

    torch.manual_seed(0)  # a rewrite check: the same numbers before and after, so untrained weights do
    x = digits[0][N_TRAIN : N_TRAIN + 64]
    source = SourceModel("pytorch", "head", 0, module=Head().eval(), input_names=["input"])
    fp32 = export_onnx(source, [TensorSpec("input", (1, 1, 8, 8), "float32")], tmp_path / "head.onnx")
    qdq = int8.quantize_static(
        fp32, tmp_path / "q.onnx", Dataset({"input": x}, None, "digits"), tmp_path, QuantConfig(), lambda n: None
    )
    before = onnx.load(str(qdq))
    producers = {o: n for n in before.graph.node for o in n.output}
    gemm = next(n for n in before.graph.node if n.op_type == "Gemm")
    assert producers[gemm.input[0]].op_type == "Reshape"  # the case being fixed
    onnx.save(int8.quantize_biases(before), str(tmp_path / "biased.onnx"))
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tmp_path / "biased.onnx"), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops.count("QGemm") == 1 and "Gemm" not in ops, ops
    # The spatial mean was exported as a global pool, which ORT runs in int8 without layout changes around it.
    assert "QLinearGlobalAveragePool" in ops and "ReduceMean" not in ops and "DequantizeLinear" not in ops, ops
    reference, rewritten = _exact(qdq, x), _exact(tmp_path / "biased.onnx", x)
    assert np.abs(rewritten - reference).max() <= 0.02 * np.abs(reference).max()


@pytest.mark.parametrize("opset", [13, 18])  # the mean's axes: an attribute before opset 18, an input from it on
def test_spatial_means_export_as_global_pools(digits, tmp_path, opset):
    """Means over all spatial axes (kept or dropped) become GlobalAveragePool (+ Flatten); others stay."""
    from onnx import helper

    means = {"kept": ([2, 3], 1), "dropped": ([-1, -2], 0), "channels": ([1], 0), "width": ([3], 1)}
    nodes, inits = [helper.make_node("Relu", ["input"], ["y"])], []
    for name, (axes, keep) in means.items():
        if opset < 18:
            nodes.append(helper.make_node("ReduceMean", ["y"], [name], axes=axes, keepdims=keep))
        else:  # axes from an initializer, or from a Constant node
            if name == "dropped":
                nodes.append(helper.make_node("Constant", [], [f"{name}_axes"], value_ints=axes))
            else:
                inits.append(numpy_helper.from_array(np.array(axes, np.int64), f"{name}_axes"))
            nodes.append(helper.make_node("ReduceMean", ["y", f"{name}_axes"], [name], keepdims=keep))
    graph = helper.make_graph(
        nodes,
        "means",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in means],
        inits,
    )
    path = tmp_path / "means.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8), str(path))
    source = SourceModel("onnx", "means", 0, onnx_path=path)
    out = export_onnx(source, [TensorSpec("input", (1, 1, 8, 8), "float32")], tmp_path / "out.onnx")
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("GlobalAveragePool") in (1, 2) and ops.count("ReduceMean") == 2, ops  # 1: onnxslim shares it
    for sample in digits[0][N_TRAIN : N_TRAIN + 8]:
        feed = {"input": sample[None] - 0.5}
        for before, after in zip(_run(path, feed), _run(out, feed), strict=True):
            assert before.shape == after.shape
            np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)


def _run(path: Path, feed: dict) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def test_corrected_biases_are_carried_into_the_float_graph(graphs, digits, tmp_path):
    out = tmp_path / "biased.onnx"
    count = int8.with_corrected_biases(graphs["fp32"], graphs["nncf"], out)
    fp32, corrected, qdq = (onnx.load(str(p)) for p in (graphs["fp32"], out, graphs["nncf"]))
    convs = [n for n in fp32.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 2]
    assert 0 < count <= len(convs)
    before = {t.name: numpy_helper.to_array(t) for t in fp32.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in corrected.graph.initializer}
    source = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    twins = {n.name: n for n in qdq.graph.node}
    changed = [n for n in convs if not np.array_equal(before[n.input[2]], after[n.input[2]])]
    assert len(changed) == count
    for node in changed:
        np.testing.assert_array_equal(after[node.input[2]], source[twins[node.name].input[2]])
    # Only biases change: every other tensor is the original's.
    assert all(np.array_equal(before[k], after[k]) for k in before if k not in {n.input[2] for n in changed})
    # The ORT graph has no float biases to take: nothing changes.
    assert int8.with_corrected_biases(graphs["fp32"], graphs["ort"], tmp_path / "same.onnx") == 0


def _shared_graph_where_nncf_fails(graphs, digits, tmp_path, monkeypatch, error: str, fails) -> Path:
    """The shared int8 graph (default settings) with NNCF raising ``error`` for every QuantConfig ``fails`` picks."""
    quantize = int8.nncf_quantize

    def failing(model, feeds, quant, advanced, ignored=None, transformer=False):
        if fails(quant):
            raise RuntimeError(error)
        return quantize(model, feeds, quant, advanced, ignored, transformer)

    monkeypatch.setattr(int8, "nncf_quantize", failing)
    calib = Dataset({"input": digits[0][:32]}, None, "digits")
    return int8.quantize_static(graphs["fp32"], tmp_path / "q.onnx", calib, tmp_path, QuantConfig(), lambda n: None)


def test_auto_calibration_goes_on_when_one_estimator_fails(graphs, digits, tmp_path, monkeypatch):
    out = _shared_graph_where_nncf_fails(
        graphs, digits, tmp_path, monkeypatch, "histogram collector failed", lambda q: q.method == "entropy"
    )
    assert int8.calib_method(out) == "minmax" and int8.quantizer(out)[0].startswith("NNCF post-training")


def test_fast_bias_correction_where_the_full_one_fails(graphs, digits, tmp_path, monkeypatch):
    """NNCF's full bias correction fails on some graphs (MiniLM: "Duplicate definition-site"): its fast one still
    corrects the biases, and the graph says so (before, ORT's quantizer took over with no correction at all)."""
    out = _shared_graph_where_nncf_fails(
        graphs, digits, tmp_path, monkeypatch, "Duplicate definition-site", lambda q: q.bias_correction == "full"
    )
    how, biases = int8.quantizer(out)
    assert biases == "fast" and "fast bias correction" in how and "(full bias correction failed" in how, how


def test_nncf_failure_falls_back_to_ort_and_says_so(graphs, digits, tmp_path, monkeypatch):
    def broken(*args):
        raise RuntimeError("no pattern matches this graph")

    monkeypatch.setattr(int8, "_quantize_nncf", broken)
    calib = Dataset({"input": digits[0][:32]}, None, "digits")
    out = int8.quantize_static(graphs["fp32"], tmp_path / "q.onnx", calib, tmp_path, QuantConfig(), lambda n: None)
    how, biases = int8.quantizer(out)
    assert how == (
        "NNCF failed (RuntimeError: no pattern matches this graph); ONNX Runtime quantize_static, minmax calibration, "
        "per-channel weights, asymmetric activations instead"
    )
    assert not biases
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(out)).graph.node)


@pytest.mark.parametrize("field", ["quantizer", "bias_correction"])
def test_unknown_settings_are_refused(field):
    with pytest.raises(EdgekitError, match=field.replace("_", " ")):
        QuantConfig(**{field: "vibes"})


def test_onnx_runtime_on_x86_without_vnni_gets_7_bit_weights_and_its_fast_u8s8_kernels(
    graphs, digits, tmp_path, monkeypatch
):
    """AVX2's u8×s8 multiply-add saturates 16-bit sums of 8-bit products: ORT's build there is quantized again
    with 7-bit weights (every sum fits) and uint8 activations, its input layer float; the host's real kernels
    then compute exactly what the graph says."""
    from edgekit.converters import get_converter
    from edgekit.converters.base import BuildContext
    from edgekit.converters.onnxruntime import build as ort_build

    from edgekit.target import load_target

    monkeypatch.setattr(ort_build, "x86_without_vnni", lambda: True)
    x, y = digits
    spec = TensorSpec("input", (1, 1, 8, 8), "float32")
    calib = Dataset({"input": x[:128]}, None, "digits")
    ctx = BuildContext(
        graphs["fp32"], graphs["nncf"], "int8", load_target("host"), calib, [spec], [], tmp_path, tmp_path
    )
    result = get_converter("onnxruntime").build(ctx)
    assert any(
        "7-bit weights" in n and "U8S8" in n and "1 layer(s) fed by the model's inputs" in n for n in result.notes
    )
    assert "7-bit weights, 1 input layer(s) float" in result.quantization, result.quantization
    path = tmp_path / result.artifacts["model"]
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    compute = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert producers.get(compute[0].input[0]) is None or producers[compute[0].input[0]].op_type != "DequantizeLinear"
    for node in compute[1:]:
        dq = producers[node.input[1]]
        weights = numpy_helper.to_array(inits[dq.input[0]])
        assert weights.dtype == np.int8 and np.abs(weights.astype(int)).max() <= 64, node.name
        assert producers[node.input[0]].op_type == "DequantizeLinear"
    activations = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert activations and all(inits[n.input[2]].data_type == TensorProto.UINT8 for n in activations)
    held_out, labels = x[N_TRAIN:], y[N_TRAIN:]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # every optimization on
    fused = np.concatenate([session.run(None, {"input": held_out[i : i + 1]})[0] for i in range(len(held_out))])
    exact = _exact(path, held_out)
    assert np.abs(fused - exact).max() <= 1e-3 * np.abs(exact).max()  # no saturated sum
    fp32 = (_exact(graphs["fp32"], held_out).argmax(1) == labels).mean()
    assert (fused.argmax(1) == labels).mean() >= fp32 - 0.005


def test_attention_is_told_from_a_classifier_with_a_softmax(tmp_path):
    """A MatMul of two activations beside a Softmax is attention (NNCF's transformer type); a MatMul with a
    transposed weight and a softmax output is not."""
    from onnx import helper

    f = TensorProto.FLOAT

    def graph(nodes, name):
        inits = [helper.make_tensor("w", f, [2, 2], [1.0, 0.0, 0.0, 1.0])]
        io = ([helper.make_tensor_value_info("x", f, [2, 2])], [helper.make_tensor_value_info("y", f, None)])
        onnx.save(helper.make_model(helper.make_graph(nodes, name, *io, inits)), str(tmp_path / f"{name}.onnx"))
        return tmp_path / f"{name}.onnx"

    attention = [
        helper.make_node("MatMul", ["x", "w"], ["q"]),
        helper.make_node("Transpose", ["x"], ["k"]),
        helper.make_node("MatMul", ["q", "k"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["y"]),
    ]
    classifier = [
        helper.make_node("Transpose", ["w"], ["wt"]),
        helper.make_node("MatMul", ["x", "wt"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["y"]),
    ]
    assert int8.is_transformer(graph(attention, "attention"))
    assert not int8.is_transformer(graph(classifier, "classifier"))
