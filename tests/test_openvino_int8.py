"""OpenVINO int8 is quantized the way the target's CPU plugin can execute it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from edgekit.converters import get_converter
from edgekit.converters.base import BuildContext
from edgekit.converters.openvino import build as ov_build
from onnx import TensorProto, helper

from edgekit import int8
from edgekit.data import Dataset, TensorSpec
from edgekit.onnx_hub import export_onnx
from edgekit.source import SourceModel
from edgekit.target import load_target


class Block(torch.nn.Module):
    """Stem conv, then an inverted-residual block: expand 1×1, depthwise 3×3 + ReLU6, project 1×1."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.expand = torch.nn.Conv2d(8, 16, 1)
        self.depthwise = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.project = torch.nn.Conv2d(16, 8, 1)
        self.fc = torch.nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        y = y + self.project(torch.clamp(self.depthwise(torch.clamp(self.expand(y), 0, 6)), 0, 6))
        return self.fc(y.flatten(1))


@pytest.fixture(scope="module")
def block(tmp_path_factory, digits):
    torch.manual_seed(0)  # which ops get quantizers, not accuracy: untrained weights do
    root = tmp_path_factory.mktemp("ov")
    source = SourceModel("pytorch", "block", 0, module=Block().eval(), input_names=["input"])
    spec = TensorSpec("input", (1, 1, 8, 8), "float32")
    fp32 = export_onnx(source, [spec], root / "fp32.onnx")
    return root, fp32, spec, Dataset({"input": digits[0][:32]}, None, "digits")


def _quantized_inputs(ir) -> dict[str, bool]:
    """The convolutions in graph order (stem, expand, depthwise, project) → whether a FakeQuantize feeds them."""
    import openvino as ov

    model = ov.Core().read_model(str(ir))
    convs = [op for op in model.get_ordered_ops() if op.get_type_name() in ("Convolution", "GroupConvolution")]
    assert [op.get_type_name() for op in convs].count("GroupConvolution") == 1
    quantized = [op.input_value(0).get_node().get_type_name() == "FakeQuantize" for op in convs]
    return dict(zip(("stem", "expand", "depthwise", "project"), quantized, strict=True))


def _build(block, target: str, name: str, shared=None) -> tuple[dict[str, bool], list[str], str]:
    root, fp32, spec, calib = block
    out = root / name
    out.mkdir()
    ctx = BuildContext(fp32, shared, "int8", load_target(target), calib, [spec], [], out, root)
    result = get_converter("openvino").build(ctx)
    return _quantized_inputs(out / result.artifacts["model"]), result.notes, result.quantization


def _stem_weights(xml) -> int:
    """The largest stored int8 weight of the first convolution (7-bit weights: at most 63)."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    stem = next(op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution")
    stack = [stem.input_value(1).get_node()]
    while stack:
        node = stack.pop()
        if node.get_type_name() == "Constant" and node.get_element_type() == ov.Type.i8:
            return int(np.abs(node.get_data().astype(int)).max())
        stack += [v.get_node() for v in node.input_values()]
    raise AssertionError("no int8 weights")


@pytest.mark.parametrize(
    ("bits", "method", "ranges"), [("8", "minmax", "min/max"), ("7", "entropy", "histogram (MSE)")]
)
def test_openvino_takes_the_shared_graphs_ranges_and_first_layer_bits(block, bits, method, ranges):
    root, fp32, _, _ = block
    model = onnx.load(str(fp32))
    onnx.helper.set_model_props(model, {int8.FIRST_LAYER_KEY: bits, int8.METHOD_KEY: method})
    shared = root / f"shared_{bits}.onnx"
    onnx.save(model, str(shared))  # only its metadata is read
    _, notes, quantization = _build(block, "arm64", f"shared_{bits}", shared)
    assert f"calibration: NNCF's {ranges} ranges, as the shared int8 graph chose them" in notes, notes
    assert f"{method} calibration" in quantization, quantization
    assert _stem_weights(root / f"shared_{bits}" / "model_int8.xml") == {"8": 127, "7": 63}[bits]


def test_arm_leaves_depthwise_convolutions_float_and_quantizes_the_rest(block):
    quantized, notes, _ = _build(block, "arm64", "arm")
    assert quantized == {"stem": True, "expand": True, "depthwise": False, "project": True}
    # Stem, expand, depthwise and project convolutions and the classifier: one of five never runs in int8 there.
    assert any("1 of the 5 compute layers are depthwise convolutions" in n and "at most 4 can" in n for n in notes)


def test_x86_without_vnni_keeps_the_input_layer_float(block, monkeypatch):
    monkeypatch.setattr(ov_build, "x86_without_vnni", lambda: True)
    quantized, notes, _ = _build(block, "host", "x86")
    assert quantized == {"stem": False, "expand": True, "depthwise": True, "project": True}
    assert any("7-bit weights" in n and "1 fed by the model's inputs" in n for n in notes), notes


def test_input_layers_are_found_past_normalisation_and_layout_ops(tmp_path):
    """The first conv/matmul on each path from an input, however many elementwise or layout ops come first; an op
    that also takes a layer's output (a mask added to attention scores) ends the path."""
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Sub", ["image", "mean"], ["centred"], name="sub"),
        helper.make_node("Transpose", ["centred"], ["nchw"], name="layout", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w"], ["c1"], name="first_conv"),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], name="second_conv"),
        helper.make_node("MatMul", ["tokens", "m"], ["t1"], name="first_matmul"),
        # An attention-style mask: computed from an input, then added to a layer's output.
        helper.make_node("Mul", ["mask", "m"], ["mask_bias"], name="mask_bias"),
        helper.make_node("MatMul", ["t1", "m"], ["scores"], name="scores"),
        helper.make_node("Add", ["scores", "mask_bias"], ["masked"], name="masked"),
        helper.make_node("MatMul", ["masked", "m"], ["t2"], name="after_mask"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("image", f, [1, 4, 4, 1]),
            helper.make_tensor_value_info("tokens", f, [1, 2]),
            helper.make_tensor_value_info("mask", f, [1, 2]),
        ],
        [helper.make_tensor_value_info("c2", f, None), helper.make_tensor_value_info("t2", f, None)],
        [
            helper.make_tensor("mean", f, [1], [0.5]),
            helper.make_tensor("w", f, [1, 1, 1, 1], [1.0]),
            helper.make_tensor("w2", f, [1, 1, 1, 1], [1.0]),
            helper.make_tensor("m", f, [2, 2], np.eye(2).ravel().tolist()),
        ],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "g.onnx"))
    assert int8.input_layers(tmp_path / "g.onnx") == ["first_conv", "first_matmul"]


def test_openvino_asks_for_the_shared_graph_only_for_static_int8():
    from edgekit.converters import backend_spec

    spec = backend_spec("openvino")
    assert spec.uses_int8_graph("static") and not spec.uses_int8_graph("dynamic")
