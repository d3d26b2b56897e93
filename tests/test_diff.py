"""edgekit diff: per-layer error against the original, and a deliberately damaged build located."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from edgekit import convert
from edgekit.cli import app
from edgekit.diff import layer_diff
from edgekit.onnx_hub import x86_without_vnni
from tests.conftest import N_TRAIN, cnn_options


@pytest.fixture(scope="module")
def converted(cnn_case, tmp_path_factory):
    out = tmp_path_factory.mktemp("diff") / "out"
    report = convert(
        cnn_options(cnn_case, target="host", backends=("onnxruntime", "openvino", "tvm"), out=out, runs=2, warmup=1)
    )
    return out, report


def _damage(build, layer_weight: str, factor: float) -> None:
    """Scale one conv's int8 weight scale: that layer alone computes wrong values."""
    path = next(build.glob("*.onnx"))
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    # the int8 weight's DequantizeLinear (NNCF names the stored weight after the float one)
    node = next(
        n
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and layer_weight in n.input[0]
    )
    init = inits[node.input[1]]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name))
    onnx.save(model, str(path))


def test_int8_rows_compute_in_integers_or_say_they_do_not(converted):
    rows = {b["backend"]: b for b in converted[1]["builds"]}
    ort = rows["onnxruntime"]["executed"]
    # QLinearConv ×3 + QGemm/QLinearMatMul; on x86 without VNNI ORT's 7-bit-weight build keeps the input conv float
    assert ort["int8_compute_layers"] == (3 if x86_without_vnni() else 4) and not ort["mostly_float"], ort
    assert rows["openvino"]["executed"]["int8_compute_layers"] > 0
    # TVM 0.27 lowers a QDQ graph to float kernels: no "int8" row that computes in float, an fp32 row that says so
    tvm = rows["tvm"]
    assert tvm["status"] == "ok" and tvm["requested_precision"] == "int8" and tvm["precision"] == "fp32"
    assert "executed" not in tvm and any("tvm int8 is not offered for static int8" in n for n in tvm["notes"])


def test_diff_points_at_damaged_layer(converted, digits, tmp_path):
    converted, _ = converted
    x, _ = digits
    feed = {"x": x[N_TRAIN : N_TRAIN + 1]}
    clean = layer_diff(converted / "onnx" / "model.onnx", converted / "onnxruntime_int8", feed)
    # healthy int8: no layer drops ≥ 6 dB to below 25 dB
    assert clean["matched_layers"] >= 8 and clean["first_jump"] is None
    assert min(r["cosine"] for r in clean["rows"]) > 0.99

    damaged = tmp_path / "onnxruntime_int8"
    shutil.copytree(converted / "onnxruntime_int8", damaged)
    _damage(damaged, "features.3.weight", 3.0)
    result = layer_diff(converted / "onnx" / "model.onnx", damaged, feed)
    assert result["first_jump"]["params"] == ["features.3.weight"] and result["first_jump"]["op"] == "Conv"
    assert result["largest_jump"]["params"] == ["features.3.weight"]
    before = next(r for r in result["rows"] if r["params"] == ["features.0.weight"])
    assert before["snr_db"] > 35  # the layer before the damage is untouched

    np.savez(tmp_path / "x.npz", x=x[N_TRAIN : N_TRAIN + 2])
    cli = CliRunner().invoke(
        app,
        [
            *("diff", str(converted), str(damaged), "--inputs", str(tmp_path / "x.npz")),
            *("--out", str(tmp_path / "d.json"), "--plot", str(tmp_path / "d.png")),
        ],
    )
    assert cli.exit_code == 0, cli.output
    assert "first layer whose error jumps" in cli.output and "features.3.weight" in cli.output
    assert json.loads((tmp_path / "d.json").read_text())["backend"] == "onnxruntime"
    assert (tmp_path / "d.png").stat().st_size > 5000


def test_diff_reads_openvino_intermediates(converted, digits):
    converted, _ = converted
    x, _ = digits
    result = layer_diff(converted / "onnx" / "model.onnx", converted / "openvino_int8", {"x": x[N_TRAIN : N_TRAIN + 1]})
    assert result["compared_through"] == "OpenVINO runtime" and result["matched_layers"] >= 4
    # A layer kept in float (on x86 without VNNI: the input layer) is exact: infinite SNR.
    assert all(r["cosine"] > 0.9 for r in result["rows"]), result["rows"]
    assert all(np.isfinite(r["snr_db"]) or r["max_abs"] == 0 for r in result["rows"]), result["rows"]
    assert any(np.isfinite(r["snr_db"]) for r in result["rows"])


def test_diff_refuses_tflite_and_bad_input(converted, tmp_path):
    converted, _ = converted
    build = tmp_path / "tflite_int8"
    build.mkdir()
    (build / "build.json").write_text(json.dumps({"backend": "tflite", "precision": "int8", "artifacts": {}}))
    np.savez(tmp_path / "x.npz", x=np.zeros((1, 1, 8, 8), np.float32))
    result = CliRunner().invoke(app, ["diff", str(converted), str(build), "--inputs", str(tmp_path / "x.npz")])
    assert result.exit_code == 2 and "onnx2tf" in result.output
    result = CliRunner().invoke(app, ["diff", str(tmp_path), str(build), "--inputs", str(tmp_path / "x.npz")])
    assert result.exit_code == 2 and "need an ONNX graph" in result.output
