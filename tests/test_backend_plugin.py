"""A backend is one folder: one registered from this test (no edit anywhere else in edgekit) gets a checked
row in the report, a profile and a per-layer diff; profile and diff read the target and the graph a build
was made from out of its manifest (custom .toml targets, dynamic int8)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pytest
from edgekit.converters import backend_names
from typer.testing import CliRunner

from edgekit import ConvertOptions, convert
from edgekit.cli import app
from edgekit.onnx_hub import QuantConfig
from tests.conftest import cnn_options

SPEC = """
from edgekit.converters.base import BackendSpec

SPEC = BackendSpec(
    name="ort_basic",
    summary="ONNX Runtime with basic graph optimizations and sequential execution",
    precisions=("fp32", "int8"),
    converter="build:BasicOrt",
    runtime_modules=("onnxruntime",),
    runtime_package="onnxruntime==1.31.1",
    int8_graph=True,
    color="#17becf",
)
"""
BUILD = """
import shutil

from edgekit.converters.base import BuildResult, Converter, io_by_name, write_manifest


class BasicOrt(Converter):
    def build(self, ctx):
        self.check_precision(ctx.precision)
        dst = ctx.out_dir / f"model_{ctx.precision}.onnx"
        shutil.copyfile(ctx.source_graph(ctx.precision), dst)
        quant = "edgekit's shared int8 graph" if ctx.precision == "int8" else ""
        result = BuildResult(self.name, ctx.precision, {"model": dst.name}, quantization=quant)
        write_manifest(ctx, result, io_by_name(ctx.inputs), io_by_name(ctx.outputs))
        return result

    def layer_tensors(self, build_dir, manifest, feed, wanted):
        from edgekit.diff import onnx_intermediates

        return onnx_intermediates(build_dir / manifest["artifacts"]["model"], feed), "its ONNX graph"
"""
RUNTIME = """
import json
from pathlib import Path


def _session(build_dir, manifest, threads, profile=False):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.enable_profiling = profile
    model = str(build_dir / manifest["artifacts"]["model"])
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def load(build_dir, manifest, threads):
    import onnxruntime as ort

    sess = _session(build_dir, manifest, threads)
    names = [o["name"] for o in manifest["outputs"]]
    return (lambda feed: sess.run(names, feed)), "onnxruntime " + ort.__version__ + " (basic)"


def profile(build_dir, manifest, threads, feeds, repeats):
    sess = _session(build_dir, manifest, threads, profile=True)
    for i in range(repeats):
        sess.run(None, feeds[i % len(feeds)])
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    ops = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = ops.setdefault(e["name"], {"name": e["name"], "type": e["args"].get("op_name", "?"), "us": 0.0})
            op["us"] += e["dur"]
    return {"tool": "onnxruntime profiler", "ops": list(ops.values())}
"""


@pytest.fixture
def extra_backend(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "plugins" / "ort_basic"
    folder.mkdir(parents=True)
    for name, text in (("__init__.py", SPEC), ("build.py", BUILD), ("runtime.py", RUNTIME)):
        (folder / name).write_text(text)
    monkeypatch.setenv("EDGEKIT_BACKENDS", str(folder))
    return folder


def _target(path: Path, backends: list[str]) -> Path:
    """A custom target file (the only place the new backend is named)."""
    arch = platform.machine()
    path.write_text(
        f'name = "lab-box"\ntriple = "{arch}-linux-gnu"\narch = "{arch}"\nbackends = {json.dumps(backends)}\n'
        'default_precision = ["fp32", "int8"]\nrunner = "host"\n'
    )
    return path


def _cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_a_backend_registered_from_its_folder_is_built_checked_profiled_and_diffed(tmp_path, cnn_case, extra_backend):
    assert "ort_basic" in backend_names()
    target = _target(tmp_path / "lab.toml", ["onnxruntime", "ort_basic"])
    out = tmp_path / "o"
    report = convert(cnn_options(cnn_case, target=str(target), eval=cnn_case["eval"], out=out, runs=3, warmup=1))
    assert report["schema_version"] == 2
    rows = {(r["backend"], r["precision"]): r for r in report["builds"]}
    for precision in ("fp32", "int8"):
        row = rows["ort_basic", precision]
        assert row["status"] == "ok" and row["runtime"].endswith("(basic)"), row
        assert row["latency_ms"]["p50"] > 0 and row["device"].startswith("host")
        paired = row["original_latency_ms"]  # the original timed again right after this build, same host
        assert paired["n"] == 3 and row["speedup_vs_original"] == pytest.approx(
            paired["p50"] / row["latency_ms"]["p50"]
        )
        task = row["accuracy"]["task_metric"]
        assert task["build"] >= task["original"] - 0.02  # checked against the labels, not just run
    assert rows["ort_basic", "fp32"]["accuracy"]["cosine_min"] > 0.9999
    assert "does not report" in rows["ort_basic", "int8"]["executed"]["unavailable"]  # honest default
    assert "#17becf" in (out / "report.html").read_text()  # its declared colour in the plots
    manifest = json.loads((out / "ort_basic_int8" / "build.json").read_text())
    assert manifest["target_spec"]["name"] == "lab-box" and manifest["source_graph"].endswith("model_int8_qdq.onnx")

    target.unlink()  # profile and diff take the target and the graph from the build's manifest
    np.savez(tmp_path / "in.npz", input=np.load(cnn_case["eval"])["input"][:4])
    prof = _cli("profile", out / "ort_basic_int8", "--inputs", tmp_path / "in.npz", "--out", tmp_path / "p.json")
    assert prof.exit_code == 0, prof.output
    ops = json.loads((tmp_path / "p.json").read_text())["profile"]["ops"]
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= {op["type"] for op in ops}  # basic level: no fusion
    diff = _cli("diff", out, out / "ort_basic_int8", "--inputs", tmp_path / "in.npz", "--out", tmp_path / "d.json")
    assert diff.exit_code == 0, diff.output
    layers = json.loads((tmp_path / "d.json").read_text())
    assert layers["backend"] == "ort_basic" and layers["matched_layers"] >= 8
    assert min(r["cosine"] for r in layers["rows"]) > 0.98


def test_a_backend_folder_without_a_spec_is_one_line(tmp_path, monkeypatch):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "__init__.py").write_text("X = 1\n")
    monkeypatch.setenv("EDGEKIT_BACKENDS", str(folder))
    result = _cli("targets")
    assert result.exit_code == 2 and "has no SPEC" in result.output and "Traceback" not in result.output


MLP = """
import torch


def build():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 10))
"""


def test_profile_and_diff_of_dynamic_int8_builds(tmp_path, digits):
    import torch

    x, y = digits
    (tmp_path / "mlp.py").write_text(MLP)
    namespace: dict = {}
    exec(MLP, namespace)
    model = namespace["build"]()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):  # a digits MLP (MatMul/Gemm only: TVM keeps dynamic int8 MatMuls integer)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.from_numpy(x[:1300])), torch.from_numpy(y[:1300])).backward()
        optimizer.step()
    torch.save(model.state_dict(), tmp_path / "mlp.pt")
    np.savez(tmp_path / "calib.npz", input=x[:200])
    out = tmp_path / "o"
    opts = ConvertOptions(
        model=f"{tmp_path / 'mlp.py'}:build",
        weights=tmp_path / "mlp.pt",
        calib=tmp_path / "calib.npz",
        target="host",
        out=out,
        backends=("onnxruntime", "tvm"),
        precisions=("int8",),
        quant=QuantConfig(mode="dynamic"),
        runs=2,
        warmup=0,
    )
    report = convert(opts)
    assert all(r["status"] == "ok" and r["precision"] == "int8" for r in report["builds"]), report["builds"]
    manifest = json.loads((out / "tvm_int8" / "build.json").read_text())
    assert manifest["int8_mode"] == "dynamic" and manifest["source_graph"].endswith("model_int8_dynamic.onnx")
    np.savez(tmp_path / "in.npz", input=x[1300:1302])
    diff = _cli("diff", out, out / "tvm_int8", "--inputs", tmp_path / "in.npz", "--out", tmp_path / "d.json")
    assert diff.exit_code == 0, diff.output
    assert "model_int8_dynamic.onnx" in json.loads((tmp_path / "d.json").read_text())["compared_through"]
    prof = _cli("profile", out / "onnxruntime_int8", "--inputs", tmp_path / "in.npz", "--device", "host")
    assert prof.exit_code == 0 and "DynamicQuantizeMatMul" in prof.output, prof.output  # integer kernels ran
