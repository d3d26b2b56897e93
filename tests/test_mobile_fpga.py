"""Android, iOS and FPGA targets: native artifacts, checks where this machine can run them, honest rows where not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgekit import convert
from edgekit.adb import AdbRunner, parse_benchmark_model, parse_devices
from edgekit.cli import app
from edgekit.errors import EdgekitError
from edgekit.models.small_cnn import FlatCNN, train_small_cnn
from edgekit.runners import RunSpec, get_runner
from edgekit.target import load_target
from tests.conftest import N_TRAIN, cnn_options

DATA = Path(__file__).parent / "data"


def test_targets_list_mobile_and_fpga():
    result = CliRunner().invoke(app, ["targets"])
    assert result.exit_code == 0
    for name in ("android-arm64", "ios-arm64", "fpga"):
        assert name in result.output
    assert load_target("android-arm64").platform == "android" and load_target("fpga").extra["fpga"]["part"]


@pytest.mark.slow  # about a minute: four backends built for Android and checked in the emulated device
def test_android_target_builds_checked_on_emulated_arm64(cnn_case, tmp_path):
    report = convert(cnn_options(cnn_case, eval=cnn_case["eval"], target="android-arm64", out=tmp_path / "a"))
    rows = {(b["backend"], b.get("requested_precision", b["precision"])): b for b in report["builds"]}
    assert set(rows) == {(b, p) for b in ("tflite", "onnxruntime", "tvm") for p in ("int8", "fp16")}
    assert rows["tvm", "fp16"]["status"] == "skipped"  # TVM offers no fp16 CPU build
    for key, row in rows.items():
        if key == ("tvm", "fp16"):
            continue
        assert row["status"] == "ok", row
        assert row["latency_kind"] == "emulated" and "qemu" in row["device"]
        assert row["accuracy"]["top1_agreement"] >= 0.98
    # ONNX Runtime Mobile: the device ran the .ort file; the reduced-operator config is beside it.
    assert "onnxruntime_int8/model_int8.ort" in rows["onnxruntime", "int8"]["artifacts"]
    config = (tmp_path / "a" / "onnxruntime_int8" / "model_int8.required_operators.config").read_text()
    assert "ai.onnx" in config and "Conv" in config
    # TVM: an Android object archive (no NDK here) and the glibc twin the emulator ran.
    assert any(a.endswith("aarch64-linux-android.tar") for a in rows["tvm", "int8"]["artifacts"])
    assert any(a.endswith("aarch64-linux-gnu.so") for a in rows["tvm", "int8"]["artifacts"])
    assert any("not run on a phone" in n for n in report["not_verified"])


def test_ios_target_coreml_built_not_run_and_litert_checked(cnn_case, tmp_path):
    report = convert(cnn_options(cnn_case, target="ios-arm64", out=tmp_path / "i"))
    rows = {b["backend"]: b for b in report["builds"]}
    coreml, tflite = rows["coreml"], rows["tflite"]
    assert coreml["status"] == "skipped" and coreml["device"] == "not run"
    assert "Core ML runs only on macOS/iOS" in coreml["reason"] and coreml["accuracy"] is None
    package = tmp_path / "i" / "coreml_int8" / "model_int8.mlpackage"
    assert (package / "Manifest.json").exists()
    program = json.loads((tmp_path / "i" / "coreml_int8" / "build.json").read_text())["program"]
    assert program["ops"]["conv"] == 3 and program["compressed_weight_ops"].get("constexpr_affine_dequantize", 0) >= 1
    assert tflite["status"] == "ok" and tflite["accuracy"]["top1_agreement"] >= 0.98
    assert any("Core ML builds were converted" in n for n in report["not_verified"])


@pytest.fixture(scope="module")
def flat_cnn(tmp_path_factory, digits) -> dict:
    x, y = digits
    model = train_small_cnn(torch.from_numpy(x[:N_TRAIN]), torch.from_numpy(y[:N_TRAIN]), epochs=12, model=FlatCNN())
    path = tmp_path_factory.mktemp("flat") / "flat.pt"
    torch.save(model.state_dict(), path)
    return {"weights": path}


@pytest.mark.slow  # about 35 s: hls4ml project and C simulation (keeps the default suite under 15 min)
def test_fpga_target_hls_project_and_csim_accuracy(cnn_case, flat_cnn, tmp_path):
    report = convert(
        cnn_options(
            cnn_case,
            model="edgekit.models.small_cnn:FlatCNN",
            weights=flat_cnn["weights"],
            eval=cnn_case["eval"],
            eval_size=400,
            target="fpga",
            out=tmp_path / "f",
            runs=5,
        )
    )
    (row,) = report["builds"]
    assert row["backend"] == "hls4ml" and row["status"] == "ok", row
    task = row["accuracy"]["task_metric"]
    assert task["original"] - task["build"] <= 0.02  # 8-bit weights / 16-bit activations, fixed point
    assert row["accuracy"]["top1_agreement"] >= 0.95
    assert row["latency_kind"] == "simulated" and "speedup_vs_original" not in row
    assert any("not synthesized" in n for n in row["notes"])
    project = tmp_path / "f" / "hls4ml_int8" / "hls_project"
    assert (project / "build_prj.tcl").exists() and (project / "firmware" / "edgekit_model.cpp").exists()
    precision = json.loads((tmp_path / "f" / "hls4ml_int8" / "build.json").read_text())["layer_precision"]
    assert precision["head"]["weight"].startswith("ap_fixed<8,")
    assert any("C-simulation" in n for n in report["not_verified"])


def test_fpga_model_too_large_for_parallel_design(tmp_path, cnn_case):
    spec = tmp_path / "big.py"
    spec.write_text(
        "from edgekit.models.small_cnn import FlatCNN\n\ndef big():\n    return FlatCNN(widths=(128, 512)).eval()\n"
    )
    report = convert(cnn_options(cnn_case, model=f"{spec}:big", weights=None, target="fpga", out=tmp_path / "f"))
    (row,) = report["builds"]
    assert row["status"] == "failed" and "io_stream" in row["reason"] and "weights" in row["reason"]


def test_adb_parsing_and_commands():
    assert parse_devices("List of devices attached\nR58M12345\tdevice\nemulator-5554\tunauthorized\n\n") == {
        "R58M12345": "device",
        "emulator-5554": "unauthorized",
    }
    timings = parse_benchmark_model((DATA / "benchmark_model_pixel7.txt").read_text())
    assert timings["runs"] == 50 and timings["avg_ms"] == pytest.approx(5.38942)
    assert timings["min_ms"] == pytest.approx(5.187) and timings["inference_avg_ms"] == pytest.approx(5.38942)
    assert timings["first_inference_ms"] == pytest.approx(11.862) and timings["memory_overall_mb"] == 17.8516
    runner = get_runner("adb://R58M12345?python=/data/local/tmp/py/bin/python3", load_target("android-arm64"))
    assert isinstance(runner, AdbRunner)
    spec = RunSpec(warmup=3, runs=20, threads=4, timeout=60)
    shell = runner.shell_command("/data/local/tmp/edgekit-x", "tflite_int8", "eval_inputs.npz", spec)
    assert shell[:4] == ["adb", "-s", "R58M12345", "shell"]
    assert shell[4].startswith("cd /data/local/tmp/edgekit-x && timeout -s KILL 60 /data/local/tmp/py/bin/python3")
    assert "--runs 20" in shell[4] and "--threads 4" in shell[4]
    bench = runner.benchmark_command("/r", "tflite_int8/model_int8.tflite", spec)
    assert "--graph=/r/tflite_int8/model_int8.tflite" in bench[-1] and "--num_runs=20" in bench[-1]
    with pytest.raises(Exception, match="no timings"):
        parse_benchmark_model("ERROR: Could not open '/r/model.tflite'.")


@pytest.mark.skipif(shutil.which("adb") is None, reason="Debian's adb is installed by .ci/setup")
def test_adb_without_a_phone_is_a_clear_error(cnn_case, tmp_path):
    from edgekit.adb import _server_running

    server_before = _server_running()
    result = CliRunner().invoke(
        app,
        [
            *("convert", "edgekit.models.small_cnn:SmallCNN", "--calib", str(cnn_case["calib"])),
            *("--target", "android-arm64", "--device", "adb", "--out", str(tmp_path / "o")),
        ],
    )
    assert result.exit_code == 2 and "no Android phone attached" in result.output
    assert _server_running() == server_before  # an adb server edgekit started is stopped again
    assert not (tmp_path / "o").exists()


def test_backend_options_parse(tmp_path):
    from edgekit.cli import parse_backend_options

    cfg = tmp_path / "hls.json"
    cfg.write_text(json.dumps({"LayerName": {"head": {"ReuseFactor": 4}}}))
    assert parse_backend_options(["coreml.palettize=4", "coreml.minimum_deployment_target=iOS17"], cfg) == {
        "coreml": {"palettize": 4, "minimum_deployment_target": "iOS17"},
        "hls4ml": {"LayerName": {"head": {"ReuseFactor": 4}}},
    }
    with pytest.raises(EdgekitError, match=r"BACKEND\.KEY=VALUE"):
        parse_backend_options(["palettize=4"], None)
