"""Bad input: one clear line naming the problem and a fix, exit code 2, nothing half-written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgekit.cli import app

runner = CliRunner()


def _convert(tmp_path, *args: str):
    out = tmp_path / "out"
    result = runner.invoke(app, ["convert", *args, "--out", str(out), "--runs", "2", "--warmup", "0"])
    leftovers = [p.name for p in tmp_path.iterdir() if "edgekit-" in p.name]
    return result, out, leftovers


def _one_error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    assert " — fix: " in lines[0]
    return lines[0]


@pytest.fixture
def onnx_model(tmp_path, cnn_case):
    path = tmp_path / "cnn.onnx"
    torch.onnx.export(cnn_case["model"], (torch.zeros(1, 1, 8, 8),), str(path), input_names=["input"], dynamo=False)
    return path


def test_missing_model(tmp_path, cnn_case):
    result, out, leftovers = _convert(tmp_path, str(tmp_path / "nope.onnx"), "--calib", str(cnn_case["calib"]))
    assert result.exit_code == 2
    assert "does not exist" in _one_error_line(result)
    assert not out.exists() and not leftovers


def test_truncated_onnx(tmp_path, onnx_model, cnn_case):
    data = onnx_model.read_bytes()
    onnx_model.write_bytes(data[: len(data) // 2])
    result, out, leftovers = _convert(tmp_path, str(onnx_model), "--calib", str(cnn_case["calib"]))
    assert result.exit_code == 2
    assert "not a valid ONNX file" in _one_error_line(result)
    assert not out.exists() and not leftovers


def test_truncated_torchscript(tmp_path, cnn_case):
    path = tmp_path / "cnn.pt"
    torch.jit.save(torch.jit.trace(cnn_case["model"], torch.zeros(1, 1, 8, 8)), str(path))
    path.write_bytes(path.read_bytes()[:1000])
    result, out, _ = _convert(tmp_path, str(path), "--calib", str(cnn_case["calib"]))
    assert result.exit_code == 2
    assert "corrupt or truncated" in _one_error_line(result)
    assert not out.exists()


def test_state_dict_instead_of_archive(tmp_path, cnn_case):
    result, _, _ = _convert(tmp_path, str(cnn_case["weights"]), "--calib", str(cnn_case["calib"]))
    assert result.exit_code == 2
    assert "--weights" in _one_error_line(result)


def test_weights_that_do_not_fit(tmp_path, cnn_case):
    torch.save({"head.weight": torch.zeros(3, 3)}, tmp_path / "bad.pt")
    result, out, _ = _convert(
        tmp_path,
        "edgekit.models.small_cnn:SmallCNN",
        "--weights",
        str(tmp_path / "bad.pt"),
        "--calib",
        str(cnn_case["calib"]),
    )
    assert result.exit_code == 2
    assert "do not load" in _one_error_line(result)
    assert not out.exists()


def test_empty_calibration_folder(tmp_path, onnx_model):
    (tmp_path / "empty").mkdir()
    result, out, leftovers = _convert(tmp_path, str(onnx_model), "--calib", str(tmp_path / "empty"))
    assert result.exit_code == 2
    assert "contains no images" in _one_error_line(result)
    assert not out.exists() and not leftovers


def test_missing_calibration(tmp_path, onnx_model):
    result, _, _ = _convert(tmp_path, str(onnx_model))
    assert result.exit_code == 2
    assert "no calibration data" in _one_error_line(result)


def test_shape_mismatch(tmp_path, onnx_model):
    np.savez(tmp_path / "wrong.npz", input=np.zeros((4, 1, 10, 10), np.float32))
    result, out, leftovers = _convert(tmp_path, str(onnx_model), "--calib", str(tmp_path / "wrong.npz"))
    assert result.exit_code == 2
    assert "(1, 10, 10)" in _one_error_line(result)
    assert not out.exists() and not leftovers


def test_wrong_shape_for_a_pytorch_model(tmp_path, cnn_case):
    np.savez(tmp_path / "wrong.npz", x=np.zeros((4, 3, 8, 8), np.float32))
    result, out, leftovers = _convert(
        tmp_path,
        "edgekit.models.small_cnn:SmallCNN",
        "--weights",
        str(cnn_case["weights"]),
        "--calib",
        str(tmp_path / "wrong.npz"),
    )
    assert result.exit_code == 2
    assert "fails on the given inputs" in _one_error_line(result)
    assert not out.exists() and not leftovers


def test_unknown_target_and_backend(tmp_path, onnx_model, cnn_case):
    result, _, _ = _convert(tmp_path, str(onnx_model), "--calib", str(cnn_case["calib"]), "--target", "riscv")
    assert result.exit_code == 2 and "unknown target" in _one_error_line(result)
    result, _, _ = _convert(tmp_path, str(onnx_model), "--calib", str(cnn_case["calib"]), "--backends", "tensorrt")
    assert result.exit_code == 2 and "unknown backend" in _one_error_line(result)


def test_failed_run_keeps_the_previous_output(tmp_path, cnn_case):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("{}")
    result, _, leftovers = _convert(tmp_path, str(tmp_path / "nope.onnx"), "--calib", str(cnn_case["calib"]))
    assert result.exit_code == 2
    assert (out / "report.json").read_text() == "{}" and not leftovers
