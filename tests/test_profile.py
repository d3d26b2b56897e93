"""``edgekit profile``: per-op time from the runtime's own profiler, on the host and on the emulated device."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgekit import convert
from edgekit.cli import app
from tests.conftest import cnn_options


@pytest.fixture(scope="module")
def builds(tmp_path_factory, cnn_case):
    root = tmp_path_factory.mktemp("prof")
    convert(
        cnn_options(
            cnn_case,
            target="arm64",
            device="host",
            out=root / "o",
            backends=("onnxruntime", "openvino", "tflite"),
            runs=2,
            warmup=0,
        )
    )
    np.savez(root / "in.npz", x=np.load(cnn_case["eval"])["input"][:4])
    return root


def test_onnxruntime_profile_on_host(builds):
    out = builds / "ort.json"
    result = CliRunner().invoke(
        app,
        [
            "profile",
            str(builds / "o" / "onnxruntime_int8"),
            "--inputs",
            str(builds / "in.npz"),
            "--device",
            "host",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    prof = json.loads(out.read_text())["profile"]
    types = {op["type"] for op in prof["ops"]}
    assert "QLinearConv" in types  # the int8 kernels really ran
    assert all(op["us"] > 0 for op in prof["ops"])
    assert "QLinearConv" in result.output


def test_openvino_profile_on_the_emulated_device_shows_executed_precisions(builds):
    out = builds / "ov.json"
    result = CliRunner().invoke(
        app, ["profile", str(builds / "o" / "openvino_int8"), "--inputs", str(builds / "in.npz"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["emulated"] and report["device"].startswith("emulated aarch64")
    assert any("acl" in op["type"] or "jit" in op["type"] for op in report["profile"]["ops"])


def test_tflite_says_why_it_has_no_op_profile(builds):
    result = CliRunner().invoke(
        app, ["profile", str(builds / "o" / "tflite_int8"), "--inputs", str(builds / "in.npz"), "--device", "host"]
    )
    assert result.exit_code == 0 and "benchmark_model --enable_op_profiling" in result.output


def test_profile_rejects_a_folder_that_is_not_a_build(tmp_path):
    result = CliRunner().invoke(app, ["profile", str(tmp_path), "--inputs", str(tmp_path / "x.npz")])
    assert result.exit_code == 2 and "not an edgekit build" in result.output
