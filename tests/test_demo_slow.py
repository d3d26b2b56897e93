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
    for row in rows.values():
        assert row["status"] == "ok" and row["precision"] == "int8", row
        # Held-out photos include low-confidence textures (grass, gravel), where int8 flips close calls:
        # the measured agreement is 74–80 %, cosine ≈ 0.975 (see the issue note); these floors catch collapse.
        assert row["accuracy"]["top1_agreement"] >= 0.65
        assert row["accuracy"]["cosine"] >= 0.95
        assert row["size_bytes"] < 0.4 * report["original"]["size_bytes"]
    assert any(a.endswith(".aarch64-linux-gnu.so") for a in rows["tvm"]["artifacts"])
    assert "| openvino | int8 |" in (out / "report.md").read_text()
