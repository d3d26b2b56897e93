"""Pruning: structured/unstructured on the real digits CNN, label-free recovery, the convert flow and prune-scan."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgekit import convert
from edgekit.cli import app
from edgekit.data import Dataset
from edgekit.errors import EdgekitError
from edgekit.prune import PruneConfig, prune_model
from tests.conftest import N_TRAIN, cnn_options


def _accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    with torch.inference_mode():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


@pytest.mark.parametrize(
    ("spec", "message"),
    [("structured", "KIND:RATIO"), ("columns:0.3", "unknown pruning kind"), ("structured:1.5", "not in (0, 1)")],
)
def test_prune_spec_errors(spec, message):
    with pytest.raises(EdgekitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PruneConfig.parse(spec)


def test_structured_pruning_shrinks_and_recovers_without_labels(cnn_case, digits):
    x, y = digits
    calib = Dataset({"input": x[:N_TRAIN]}, None, "digits")
    original = _accuracy(cnn_case["model"], x[N_TRAIN:], y[N_TRAIN:])
    bare = prune_model(cnn_case["model"], ["input"], calib, PruneConfig("structured", 0.4), log=lambda m: None)
    recovered = prune_model(
        cnn_case["model"], ["input"], calib, PruneConfig("structured", 0.4, recover_steps=300), log=lambda m: None
    )
    convs = [m for m in recovered.module.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [9, 19, 19]  # 16/32/32 less 40 % (rounded up)
    assert recovered.module.head.out_features == 10 and recovered.ignored == ["head"]
    assert recovered.macs_after < 0.45 * recovered.macs_before
    assert recovered.params_after < 0.5 * recovered.params_before
    assert recovered.recovery["bn_reestimated"] and recovered.recovery["steps"] == 300
    assert recovered.recovery["loss_last"] < recovered.recovery["loss_first"]
    acc_bare = _accuracy(bare.module, x[N_TRAIN:], y[N_TRAIN:])
    acc_recovered = _accuracy(recovered.module, x[N_TRAIN:], y[N_TRAIN:])
    # Self-distillation on unlabelled calibration digits brings the pruned net back near the original.
    assert acc_recovered > acc_bare
    assert acc_recovered >= original - 0.04
    # The original is untouched.
    assert [m.out_channels for m in cnn_case["model"].features if isinstance(m, torch.nn.Conv2d)] == [16, 32, 32]


def test_unstructured_pruning_keeps_zeros_through_recovery(cnn_case, digits):
    x, _ = digits
    calib = Dataset({"input": x[:N_TRAIN]}, None, "digits")
    result = prune_model(
        cnn_case["model"],
        ["input"],
        calib,
        PruneConfig("unstructured", 0.6, recover_steps=50),
        log=lambda m: None,
    )
    assert result.sparsity == pytest.approx(0.6, abs=0.01)
    weights = [m.weight for m in result.module.features if isinstance(m, torch.nn.Conv2d)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros >= 0.59  # still sparse after 50 optimiser steps
    assert result.macs_after == result.macs_before  # a dense runtime does the same work


def test_taylor_importance_needs_labels_and_ignore_must_match(cnn_case, digits):
    x, y = digits
    calib = Dataset({"input": x[:200]}, None, "digits")
    with pytest.raises(EdgekitError, match="needs labels"):
        prune_model(cnn_case["model"], ["input"], calib, PruneConfig("structured", 0.3, importance="taylor"))
    with pytest.raises(EdgekitError, match="matches no layer"):
        prune_model(cnn_case["model"], ["input"], calib, PruneConfig("structured", 0.3, ignore=("conv9",)))
    train = Dataset({"input": x[:200]}, y[:200], "digits")
    result = prune_model(
        cnn_case["model"],
        ["input"],
        calib,
        PruneConfig("structured", 0.3, importance="taylor", ignore=(r"features\.0",)),
        train,
        log=lambda m: None,
    )
    assert result.module.features[0].out_channels == 16 and result.module.features[3].out_channels < 32


def test_convert_with_pruning_every_backend(cnn_case, tmp_path):
    """The pruned model flows through ONNX, int8 and every converter; builds are checked against the original."""
    report = convert(
        cnn_options(
            cnn_case,
            eval=cnn_case["eval"],
            target="host",
            out=tmp_path / "out",
            prune=PruneConfig("structured", 0.3, recover_steps=300),
            runs=5,
            warmup=1,
        )
    )
    pruning = report["pruning"]
    assert report["original"]["macs"] == pruning["macs_before"] > report["model"]["macs"] == pruning["macs_after"]
    task = pruning["pruned_vs_original"]["task_metric"]
    assert task["original"] - task["build"] <= 0.04
    assert report["onnx"]["check"]["cosine_min"] > 0.9999  # ONNX matches the pruned model
    assert {b["backend"] for b in report["builds"]} == {"tflite", "onnxruntime", "openvino", "tvm"}
    for b in report["builds"]:
        assert b["status"] == "ok", b
        assert b["macs"] == pruning["macs_after"] and b["params"] == pruning["params_after"]
        t = b["accuracy"]["task_metric"]
        assert t["original"] - t["build"] <= 0.06  # pruning + int8 vs the unpruned fp32 original
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Pruning" in md and "self-distillation steps" in md


def test_unstructured_pruning_report_compressed_size(cnn_case, tmp_path):
    report = convert(
        cnn_options(
            cnn_case,
            target="host",
            backends=("onnxruntime",),
            precisions=("fp32",),
            out=tmp_path / "out",
            prune=PruneConfig("unstructured", 0.7),
            runs=3,
            warmup=1,
        )
    )
    (row,) = report["builds"]
    assert row["status"] == "ok" and report["pruning"]["sparsity"] == pytest.approx(0.7, abs=0.01)
    assert row["size_compressed_bytes"] < 0.6 * row["size_bytes"]


def test_cli_prune_errors(cnn_case, tmp_path):
    onnx_path = tmp_path / "m.onnx"
    torch.onnx.export(cnn_case["model"], (torch.zeros(1, 1, 8, 8),), str(onnx_path), dynamo=False)
    for args, message in (
        ([str(onnx_path), "--prune", "structured:0.3"], "--prune needs a PyTorch nn.Module"),
        (["edgekit.models.small_cnn:SmallCNN", "--prune", "structured:2"], "not in (0, 1)"),
        (["edgekit.models.small_cnn:SmallCNN", "--train", str(cnn_case["eval"])], "--train is only used"),
    ):
        out = tmp_path / "out"
        result = CliRunner().invoke(
            app, ["convert", *args, "--calib", str(cnn_case["calib"]), "--target", "host", "--out", str(out)]
        )
        assert result.exit_code == 2, result.output
        assert message in result.output and not out.exists()


def test_cli_prune_scan(cnn_case, tmp_path):
    out = tmp_path / "scan"
    result = CliRunner().invoke(
        app,
        [
            "prune-scan",
            "edgekit.models.small_cnn:SmallCNN",
            "--weights",
            str(cnn_case["weights"]),
            "--calib",
            str(cnn_case["calib"]),
            "--eval",
            str(cnn_case["eval"]),
            "--ratios",
            "0.25,0.5",
            "--recover-steps",
            "100",
            "--precision",  # pruned int8 builds: test_convert_with_pruning_every_backend
            "fp32",
            "--runs",
            "5",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    scan = json.loads((out / "scan.json").read_text())
    assert [p["ratio"] for p in scan["points"]] == [0.0, 0.25, 0.5]
    macs = [p["macs"] for p in scan["points"]]
    assert macs[0] > macs[1] > macs[2]
    assert all(b["status"] == "ok" and b["p50_ms"] > 0 for p in scan["points"] for b in p["builds"])
    assert (out / "scan.png").stat().st_size > 10_000 and "ratio" in (out / "scan.md").read_text()
    assert (out / "ratio_0.50" / "report.md").exists()
