"""The vertical slice for real: a CNN trained on real digits → every backend → checked on the host."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgekit import ConvertOptions, convert, int8
from edgekit.cli import app
from edgekit.runtime.runner_main import load_build
from edgekit.target import load_target
from tests.conftest import cnn_options

runner = CliRunner()
ELF_MACHINE = {"aarch64": 183, "x86_64": 62}


def _elf_machine(path) -> int:
    return int.from_bytes(path.read_bytes()[18:20], "little")


@pytest.fixture(scope="module")
def arm64_int8(tmp_path_factory, cnn_case):
    out = tmp_path_factory.mktemp("arm64") / "build"
    result = runner.invoke(
        app,
        [
            "convert",
            "edgekit.models.small_cnn:SmallCNN",
            "--weights",
            str(cnn_case["weights"]),
            "--target",
            "arm64",
            "--calib",
            str(cnn_case["calib"]),
            "--eval",
            str(cnn_case["eval"]),
            "--eval-size",
            "300",
            "--out",
            str(out),
            "--runs",
            "20",
            "--warmup",
            "3",
            "--min-top1-agreement",
            "0.95",
        ],
    )
    return result, out


def test_every_backend_builds_runs_on_the_emulated_arm64_device_and_agrees(arm64_int8, cnn_case):
    result, out = arm64_int8
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["original"]["framework"] == "pytorch"
    assert set(report["original"]["latency_ms"]) >= {"p50", "p90", "p99"}
    assert report["data"]["evaluation"] == {"source": str(cnn_case["eval"]), "samples": 300, "labels": True}
    builds = {b["backend"]: b for b in report["builds"]}
    assert set(builds) == set(load_target("arm64").backends) == {"tflite", "onnxruntime", "openvino", "tvm"}
    for b in builds.values():
        assert b["status"] == "ok", b
        # TVM 0.27 computes static (QDQ) int8 in float: TVM int8 is not offered, its row is TVM fp32.
        assert b["precision"] == ("fp32" if b["backend"] == "tvm" else "int8") and b["target"] == "arm64"
        # Emulated latency is labelled as such and the run count is capped under emulation.
        assert b["latency_kind"] == "emulated" and b["runs"] == 10 and b["latency_ms"]["n"] == 10
        assert "speedup_vs_original" not in b
        assert b["device_facts"]["machine"] == "aarch64" and b["device_facts"]["cpu"] == "Cortex-A76"
        acc = b["accuracy"]
        assert acc["top1_agreement"] >= 0.95 and acc["cosine"] > 0.98
        task = acc["task_metric"]
        assert task["original"] == pytest.approx(report["original"]["task_metric"]["value"])
        assert task["build"] >= task["original"] - 0.03
        for rel in b["artifacts"]:
            assert (out / rel).is_file()
        assert b["size_bytes"] > 0
    # OpenVINO's runtime precision per executed layer, by type: its compute layers are counted from it.
    ov = builds["openvino"]
    assert ov["executed"]["int8_compute_layers"] > 0 and "Convolution" in ov["runtime_precisions"]
    assert sum(ov["runtime_precisions"]["Convolution"].values()) >= 2
    # OpenVINO quantizes its own IR with the range estimator the shared int8 graph chose.
    method = int8.calib_method(out / "onnx" / "model_int8_qdq.onnx")
    ranges = {"minmax": "min/max", "entropy": "histogram (MSE)"}[method]
    assert f"calibration: NNCF's {ranges} ranges, as the shared int8 graph chose them" in ov["notes"], ov["notes"]
    tvm = out / "tvm_int8"
    manifest = json.loads((tvm / "build.json").read_text())
    assert _elf_machine(tvm / manifest["artifacts"]["aarch64"]) == ELF_MACHINE["aarch64"]
    assert _elf_machine(tvm / manifest["artifacts"]["x86_64"]) == ELF_MACHINE["x86_64"]
    assert report["runner"].startswith("emulated aarch64 cortex-a76 (qemu")
    assert "emulation latencies" in report["not_verified"][0]
    md = (out / "report.md").read_text()
    assert "| tflite | int8 |" in md and "## Not verified" in md
    assert "as run on the device: 2 warm-up + 10 timed" in md


def test_converter_interface_loads_and_describes_a_build(arm64_int8, cnn_case):
    from edgekit.converters import BuildResult, get_converter

    _, out = arm64_int8
    converter = get_converter("onnxruntime")
    manifest = json.loads((out / "onnxruntime_int8" / "build.json").read_text())
    run = converter.load(out / "onnxruntime_int8")
    x = np.load(cnn_case["eval"])["input"][:1]
    with torch.inference_mode():
        ref = cnn_case["model"](torch.from_numpy(x)).numpy()
    assert run({"x": x})[0].argmax() == ref.argmax()
    text = converter.describe(BuildResult("onnxruntime", "int8", manifest["artifacts"], quantization="static int8"))
    assert text == "onnxruntime int8 (static int8): model_int8.onnx"


def test_the_int8_tflite_is_really_integer(arm64_int8, cnn_case):
    from ai_edge_litert.interpreter import Interpreter

    _, out = arm64_int8
    interp = Interpreter(model_path=str(out / "tflite_int8" / "model_int8.tflite"))
    assert interp.get_input_details()[0]["dtype"] == np.int8
    assert interp.get_input_details()[0]["shape"].tolist() == [1, 8, 8, 1]  # channels-last
    run, _ = load_build(out / "tflite_int8", threads=1)
    x = np.load(cnn_case["eval"])["input"][:1]
    with torch.inference_mode():
        ref = cnn_case["model"](torch.from_numpy(x)).numpy()
    assert run({"x": x})[0].argmax() == ref.argmax()


def test_budget_miss_exits_1(tmp_path, cnn_case):
    opts = cnn_options(
        cnn_case,
        target="host",
        out=tmp_path / "o",
        backends=("onnxruntime",),
        runs=5,
        warmup=1,
    )
    from edgekit.pipeline import Budgets
    from edgekit.report import exit_code

    opts.budgets = Budgets(min_cosine=0.999999999, max_latency_ms=1e-6)
    report = convert(opts)
    row = report["builds"][0]
    assert row["status"] == "ok" and not row["budget"]["passed"]
    assert row["peak_rss_mb"] < 300  # the runner's own peak, not the forking parent's (torch is loaded there)
    assert any("cosine" in v for v in row["budget"]["violations"])
    assert any("p50" in v for v in row["budget"]["violations"])
    assert exit_code(report) == 1


def test_one_failing_backend_does_not_sink_the_others(tmp_path, cnn_case):
    target = tmp_path / "armish.toml"
    target.write_text(
        'name = "armish"\ntriple = "aarch64-linux-gnu"\narch = "aarch64"\n'
        'backends = ["onnxruntime", "tvm"]\ndefault_precision = "fp32"\n'
        'cross_compiler = "no-such-g++"\n'
    )
    result = runner.invoke(
        app,
        [
            "convert",
            "edgekit.models.small_cnn:SmallCNN",
            "--weights",
            str(cnn_case["weights"]),
            "--target",
            str(target),
            "--calib",
            str(cnn_case["calib"]),
            "--out",
            str(tmp_path / "o"),
            "--runs",
            "3",
            "--warmup",
            "0",
        ],
    )
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    rows = {b["backend"]: b for b in report["builds"]}
    assert rows["onnxruntime"]["status"] == "ok"
    assert rows["tvm"]["status"] == "failed" and "no-such-g++" in rows["tvm"]["reason"]
    assert not (tmp_path / "o" / "tvm_fp32").exists()


@pytest.mark.slow  # about a minute: three sources converted and checked (keeps the default suite under 15 min)
def test_onnx_torchscript_and_export_sources(tmp_path, cnn_case):
    model, x = cnn_case["model"], torch.zeros(1, 1, 8, 8)
    torch.onnx.export(model, (x,), str(tmp_path / "m.onnx"), input_names=["pixels"], dynamo=True)
    torch.jit.save(torch.jit.trace(model, x), str(tmp_path / "m.ts"))
    torch.export.save(torch.export.export(model, (x,)), str(tmp_path / "m.pt2"))
    # A dynamic batch axis gets the static shape of the data (edge runtimes want static shapes).
    torch.onnx.export(
        model,
        (x,),
        str(tmp_path / "dyn.onnx"),
        input_names=["pixels"],
        dynamo=False,
        dynamic_axes={"pixels": {0: "batch"}},
    )
    sources = (("m.onnx", "onnx"), ("dyn.onnx", "onnx"), ("m.ts", "torchscript"), ("m.pt2", "torch.export"))
    for path, framework in sources:
        report = convert(
            ConvertOptions(
                model=str(tmp_path / path),
                target="host",
                calib=cnn_case["calib"],
                eval=cnn_case["eval"],
                out=tmp_path / f"o_{path}",
                backends=("onnxruntime", "tvm"),
                precisions=("fp32",),
                runs=3,
                warmup=0,
                trust_model=framework == "torchscript",  # TorchScript can run code: refused unless trusted
            )
        )
        assert report["original"]["framework"] == framework
        for row in report["builds"]:
            assert row["status"] == "ok", row
            assert row["accuracy"]["max_abs"] < 1e-4 and row["accuracy"]["top1_agreement"] == 1.0


class TokenEncoder(torch.nn.Module):
    """A two-input encoder: int64 token ids and an attention mask → pooled embedding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(50, 32)
        self.layer = torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.layer(self.embed(input_ids))
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1)


def build_encoder() -> torch.nn.Module:
    return TokenEncoder().eval()


def test_multi_input_int64_encoder(tmp_path, digits):
    # Token ids taken from real data: the digits' pixel intensities (0–16) as a 16-token sequence.
    x, _ = digits
    ids = np.rint(x[:40, 0, :2].reshape(40, 16) * 16).astype(np.int64)
    mask = np.ones_like(ids)
    mask[::3, 12:] = 0
    np.savez(tmp_path / "tokens.npz", attention_mask=mask, input_ids=ids)  # not in forward() order
    report = convert(
        ConvertOptions(
            model="tests.test_convert:build_encoder",
            target="host",
            calib=tmp_path / "tokens.npz",
            out=tmp_path / "o",
            precisions=("fp32",),
            backends=("onnxruntime", "openvino", "tvm"),
            runs=3,
            warmup=0,
        )
    )
    assert [s["dtype"] for s in report["model"]["inputs"]] == ["int64", "int64"]
    for row in report["builds"]:
        assert row["status"] == "ok", row
        assert row["accuracy"]["cosine_min"] > 0.9999


def test_emulated_device_rejects_a_build_for_the_wrong_architecture(tmp_path, cnn_case):
    from edgekit.runners import EmulatedRunner, RunnerError, RunSpec
    from edgekit.target import load_target

    report = convert(
        cnn_options(
            cnn_case,
            target="host",
            out=tmp_path / "o",
            backends=("tvm",),
            precisions=("fp32",),
            runs=2,
            warmup=0,
        )
    )
    assert report["builds"][0]["status"] == "ok"
    np.savez(tmp_path / "in.npz", x=np.load(cnn_case["eval"])["input"][:2])
    device = EmulatedRunner(load_target("arm64"))
    with pytest.raises(RunnerError, match="no library for aarch64"):
        device.run(
            tmp_path / "o" / "tvm_fp32",
            tmp_path / "in.npz",
            tmp_path / "w",
            RunSpec(warmup=0, runs=1, threads=1, timeout=300),
        )
    with pytest.raises(RunnerError, match="timed out"):
        device.run(
            tmp_path / "o" / "tvm_fp32",
            tmp_path / "in.npz",
            tmp_path / "w2",
            RunSpec(warmup=0, runs=1, threads=1, timeout=0.2),
        )


def test_armv7_runs_what_armv7_can_and_says_what_it_cannot(tmp_path, cnn_case):
    report = convert(
        cnn_options(
            cnn_case,
            target="armv7",
            eval=cnn_case["eval"],
            out=tmp_path / "o",
            runs=3,
            warmup=0,
        )
    )
    rows = {b["backend"]: b for b in report["builds"]}
    assert report["runner"].startswith("emulated armv7l cortex-a7")
    tflite = rows["tflite"]
    assert tflite["status"] == "ok", tflite.get("reason")
    assert tflite["device_facts"]["machine"] == "armv7l" and tflite["device_facts"]["cpu"] == "Cortex-A7"
    assert tflite["runtime"].startswith("tflite-runtime 2.11")
    assert tflite["accuracy"]["top1_agreement"] >= 0.95
    # TVM's armv7 library is cross-linked and kept, but no armv7l TVM runtime exists to run it.
    tvm = rows["tvm"]
    assert tvm["status"] == "skipped" and "no TVM runtime for armv7l" in tvm["reason"]
    manifest = json.loads((tmp_path / "o" / "tvm_int8" / "build.json").read_text())
    assert _elf_machine(tmp_path / "o" / "tvm_int8" / manifest["artifacts"]["armv7l"]) == 40  # EM_ARM
    # ONNX Runtime comes from Debian trixie's armhf package, in a merged-/usr userland.
    ort = rows["onnxruntime"]
    assert ort["status"] == "ok", ort.get("reason")
    assert ort["device_facts"]["machine"] == "armv7l" and ort["device_facts"]["cpu"] == "Cortex-A7"
    assert ort["runtime"].startswith("onnxruntime 1.")
    assert ort["accuracy"]["top1_agreement"] >= 0.95
