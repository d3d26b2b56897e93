"""End to end on the bundled real model: EfficientNet-Lite0 (ImageNet weights) on real photos, target arm64."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from edgekit.cli import app

pytestmark = pytest.mark.slow


def test_demo_arm64_int8_every_backend(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--target", "arm64", "--out", str(out), "--runs", "20"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["original"]["framework"] == "pytorch" and report["data"]["evaluation"]["samples"] == 66
    assert report["onnx"]["check"]["cosine_min"] > 0.9999
    rows = {b["backend"]: b for b in report["builds"]}
    assert set(rows) == {"tflite", "onnxruntime", "openvino", "tvm"}
    for backend, row in rows.items():
        # TVM 0.27 computes static (QDQ) int8 in float: its row is TVM fp32 and says int8 is not offered.
        assert row["status"] == "ok" and row["precision"] == ("fp32" if backend == "tvm" else "int8"), row
        assert row["device_facts"]["machine"] == "aarch64" and row["latency_kind"] == "emulated"
        if backend == "tvm":
            assert any("tvm int8 is not offered" in n for n in row["notes"])
        else:
            assert row["size_bytes"] < 0.4 * report["original"]["size_bytes"]
        # Held-out photos include low-confidence textures (grass, gravel) where int8 flips close calls:
        # measured top-1 agreement 74–76 %, cosine ≈ 0.975 (see the issue note). These floors catch a collapse.
        if backend == "openvino":
            # On Arm CPUs OpenVINO runs int8 models partly in fp16/fp32 (measured: cosine 0.933, 66.7 %);
            # the report must show what ran instead of claiming int8.
            assert row["accuracy"]["cosine"] >= 0.9 and row["accuracy"]["top1_agreement"] >= 0.55
            assert {"f16", "f32"} & set(row["runtime_precisions"])
        else:
            assert row["accuracy"]["cosine"] >= 0.95 and row["accuracy"]["top1_agreement"] >= 0.65
    assert any(a.endswith(".aarch64-linux-gnu.so") for a in rows["tvm"]["artifacts"])
    assert "| openvino | int8 |" in (out / "report.md").read_text()
