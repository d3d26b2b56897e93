"""MACs/parameter counters: hand-counted small graphs, EfficientNet-Lite0 (torch vs its ONNX export), int8 QDQ."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.complexity import onnx_macs_params, torch_macs_params
from edgekit.prune import count_macs_params


def _export(module: nn.Module, example: tuple[torch.Tensor, ...], path: Path, **kwargs) -> Path:
    names = [f"x{i}" for i in range(len(example))]
    torch.onnx.export(module, example, str(path), input_names=names, opset_version=17, dynamo=False, **kwargs)
    return path


def _small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),  # 1x1x8x8 → 1x4x8x8
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2),  # → 1x8x4x4
        nn.Flatten(),  # → 1x128
        nn.Linear(128, 10),
    ).eval()


# conv1: 4 out channels x 8x8 outputs x (1 in channel x 3x3) = 2304
# conv2: 8 x 4x4 x (4/2 in channels per group x 3x3) = 2304
# linear: 128 x 10 = 1280
SMALL_NET_MACS = 4 * 8 * 8 * (1 * 9) + 8 * 4 * 4 * (2 * 9) + 128 * 10
SMALL_NET_PARAMS = (4 * 9 + 4) + (8 * 2 * 9 + 8) + (128 * 10 + 10)


def test_small_net_hand_counted(tmp_path):
    net, example = _small_net(), (torch.zeros(1, 1, 8, 8),)
    assert SMALL_NET_MACS == 5888 and SMALL_NET_PARAMS == sum(p.numel() for p in net.parameters()) == 1482
    assert torch_macs_params(net, example) == (SMALL_NET_MACS, SMALL_NET_PARAMS)
    assert count_macs_params(net, example) == (SMALL_NET_MACS, SMALL_NET_PARAMS)
    assert onnx_macs_params(_export(net, example, tmp_path / "net.onnx")) == (SMALL_NET_MACS, SMALL_NET_PARAMS)


def test_dynamic_batch_needs_input_shapes(tmp_path):
    path = _export(_small_net(), (torch.zeros(1, 1, 8, 8),), tmp_path / "net.onnx", dynamic_axes={"x0": {0: "n"}})
    with pytest.raises(ValueError, match="not static"):
        onnx_macs_params(path)
    assert onnx_macs_params(path, {"x0": (3, 1, 8, 8)}) == (3 * SMALL_NET_MACS, SMALL_NET_PARAMS)
    with pytest.raises(ValueError, match="not an input"):
        onnx_macs_params(path, {"image": (1, 1, 8, 8)})


class _MatMul(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b


@pytest.mark.parametrize(
    ("module", "shapes", "macs"),
    [
        # depthwise: 8 channels x 10x10 outputs x (8/8 in channels x 3x3)
        (nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), [(1, 8, 10, 10)], 8 * 10 * 10 * 9),
        # transposed, 2 groups: each of the 4x5x5 inputs is multiplied into 6/2 outputs x 3x3 taps
        (nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2, bias=False), [(1, 4, 5, 5)], 4 * 5 * 5 * 3 * 9),
        # batch broadcasting: (2, 1, 4, 5) @ (3, 5, 6) → (2, 3, 4, 6), 5 MACs per output
        (_MatMul(), [(2, 1, 4, 5), (3, 5, 6)], 2 * 3 * 4 * 6 * 5),
        # matrix-vector: (2, 3, 5) @ (5,) → (2, 3)
        (_MatMul(), [(2, 3, 5), (5,)], 2 * 3 * 5),
        # dot product: (5,) @ (5,) → ()
        (_MatMul(), [(5,), (5,)], 5),
        # Linear on a 3-D input exports as MatMul with a weight initializer
        (nn.Linear(5, 7, bias=False), [(2, 3, 5)], 2 * 3 * 5 * 7),
    ],
    ids=["depthwise", "conv-transpose", "matmul-broadcast", "matmul-vector", "dot", "linear-3d"],
)
def test_single_op_macs(tmp_path, module, shapes, macs):
    example = tuple(torch.rand(s) for s in shapes)
    params = sum(p.numel() for p in module.parameters())
    assert torch_macs_params(module.eval(), example) == (macs, params)
    assert onnx_macs_params(_export(module, example, tmp_path / "op.onnx")) == (macs, params)


def test_hand_built_graph_gemm_local_function_control_flow(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    # Gemm with transA: A (4, 3) → (3, 4) @ B (4, 5): 3 x 5 outputs x 4; a local function holding MatMul (3, 5) @ (5, 2)
    dense = helper.make_function(
        "local",
        "Dense",
        ["x", "w"],
        ["y"],
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [helper.make_opsetid("", 17)],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["a", "b"], ["g"], transA=1),
            helper.make_node("Dense", ["g", "w"], ["y"], domain="local"),
        ],
        "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [4, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(np.ones((4, 5), np.float32), "b"),
            numpy_helper.from_array(np.ones((5, 2), np.float32), "w"),
        ],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets, functions=[dense]), tmp_path / "g.onnx")
    assert onnx_macs_params(tmp_path / "g.onnx") == (3 * 5 * 4 + 3 * 2 * 5, 4 * 5 + 5 * 2)

    branch = helper.make_graph(
        [helper.make_node("Identity", ["a"], ["z"])],
        "b",
        [],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)],
        "g",
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    onnx.save(helper.make_model(graph, opset_imports=opsets[:1]), tmp_path / "if.onnx")
    with pytest.raises(ValueError, match=r"control flow \(If\)"):
        onnx_macs_params(tmp_path / "if.onnx")


def test_int8_qdq_graph_counts_like_float(tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.samples = iter([{"x0": np.random.default_rng(i).random((1, 1, 8, 8), np.float32)} for i in range(4)])

        def get_next(self) -> dict | None:
            return next(self.samples, None)

    fp32 = _export(_small_net(), (torch.zeros(1, 1, 8, 8),), tmp_path / "net.onnx")
    int8 = tmp_path / "net_int8.onnx"
    quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    assert onnx_macs_params(int8) == (SMALL_NET_MACS, SMALL_NET_PARAMS)


def test_efficientnet_lite0(tmp_path):
    from edgekit.models.efficientnet_lite import efficientnet_lite0

    model, example = efficientnet_lite0(), (torch.zeros(1, 3, 224, 224),)
    macs, params = torch_macs_params(model, example)
    assert 380e6 <= macs <= 400e6  # published: about 0.4 G MACs
    assert params == sum(p.numel() for p in model.parameters())
    onnx_macs, onnx_params = onnx_macs_params(_export(model, example, tmp_path / "lite0.onnx"))
    assert onnx_macs == pytest.approx(macs, rel=0.01)
    # The export folds each BatchNorm (2 parameters per channel) into its convolution's bias (1 per channel).
    bn_channels = sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert onnx_params == params - bn_channels


def test_unrunnable_module_raises_value_error():
    with pytest.raises(ValueError, match="cannot run the model"):
        torch_macs_params(nn.Linear(4, 2), (torch.zeros(1, 3),))
