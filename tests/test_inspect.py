"""``edgekit inspect``: dynamic dimensions get a static shape to use; an operator one backend lacks is named,
and the exit code predicts what ``edgekit convert`` then does."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.data import TensorSpec
from edgekit.inspect import suggest_shape

runner = CliRunner()


class CeluNet(torch.nn.Module):
    """A small CNN with a CELU activation (ONNX ``Celu``: ONNX Runtime, OpenVINO and onnx2tf have it, TVM not)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.act = torch.nn.CELU()
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv(x)).mean((2, 3)))


def _inspect(*args: str):
    result = runner.invoke(app, ["inspect", *args, "--json"])
    return result, (json.loads(result.stdout) if result.exit_code in (0, 1) else None)


def test_dynamic_dimensions_get_a_static_shape_to_use(tmp_path, cnn_case):
    path = tmp_path / "dyn.onnx"
    torch.onnx.export(
        cnn_case["model"],
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        input_names=["input"],
        dynamic_axes={"input": {0: "batch", 2: "h", 3: "w"}},
        dynamo=False,
    )
    result, report = _inspect(str(path))
    assert result.exit_code == 0, result.output
    assert report["declared_inputs"][0]["shape"] == [-1, 1, -1, -1]
    assert report["inputs"][0]["shape"] == [1, 1, 640, 640] and not report["would_fail"]
    (warning,) = [f for f in report["findings"] if f["severity"] == "warning"]
    assert "dynamic input dimensions" in warning["problem"] and "--input-shape 1x1x640x640" in warning["fix"]
    assert report["macs"] > 0 and report["ops"]["Conv"] == 3
    result, report = _inspect(str(path), "--input-shape", "1x1x8x8")
    assert result.exit_code == 0 and report["inputs"][0]["shape"] == [1, 1, 8, 8]
    assert not [f for f in report["findings"] if f["severity"] != "info"]


def test_suggested_shapes():
    assert suggest_shape(TensorSpec("x", (-1, 3, 48, -1), "float32")) == (1, 3, 48, 320)  # a text line
    assert suggest_shape(TensorSpec("x", (-1, -1, -1, 3), "float32")) == (1, 640, 640, 3)  # NHWC detector
    assert suggest_shape(TensorSpec("ids", (-1, -1), "int64")) == (1, 128)  # a token sequence


def test_an_operator_a_backend_lacks_is_named_and_convert_fails_there(tmp_path, digits):
    path = tmp_path / "celu.onnx"
    torch.onnx.export(CeluNet().eval(), (torch.zeros(1, 1, 8, 8),), str(path), input_names=["input"], dynamo=False)
    result, report = _inspect(str(path), "--target", "arm64")
    assert result.exit_code == 1, result.output
    assert report["would_fail"] and report["ops"]["Celu"] == 1
    errors = [f for f in report["findings"] if f["severity"] == "error"]
    assert [f["backend"] for f in errors] == ["tvm"] and "Celu ×1" in errors[0]["problem"]
    assert "--backends" in errors[0]["fix"]
    # What inspect predicted: TVM's row fails, the other backends convert.
    out = tmp_path / "o"
    result = runner.invoke(
        app,
        [
            *(
                "convert",
                str(path),
                "--calib",
                str(_data(tmp_path, digits[0])),
                "--target",
                "host",
                "--precision",
                "fp32",
            ),
            *("--backends", "onnxruntime,tvm", "--runs", "2", "--warmup", "0", "--out", str(out)),
        ],
    )
    assert result.exit_code == 1, result.output
    rows = {b["backend"]: b for b in json.loads((out / "report.json").read_text())["builds"]}
    assert rows["onnxruntime"]["status"] == "ok" and rows["tvm"]["status"] == "failed"
    assert "Celu" in rows["tvm"]["reason"]


def test_inspect_bad_input_is_one_line(tmp_path):
    result = runner.invoke(app, ["inspect", str(tmp_path / "nope.onnx")])
    assert result.exit_code == 2 and "does not exist" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["inspect", "edgekit.models.small_cnn:SmallCNN"])
    assert result.exit_code == 2 and "--input-shape" in result.output


def _data(tmp_path, images):
    import numpy as np

    path = tmp_path / "calib.npz"
    np.savez(path, input=images[:40])
    return path
