"""int8 from older ONNX graphs, the report's recommendation, and int8 rows flagged as degraded."""

from __future__ import annotations

from dataclasses import replace

import onnx
import torch

from edgekit import convert
from edgekit.recommend import flag_degraded, recommend
from tests.conftest import cnn_options


def test_an_opset_11_onnx_source_gets_int8_builds_that_load_and_agree(cnn_case, tmp_path):
    """Per-channel DequantizeLinear needs opset 13: an opset-11 graph used to give ORT an invalid int8 graph."""
    source = tmp_path / "cnn11.onnx"
    torch.onnx.export(cnn_case["model"], (torch.zeros(1, 1, 8, 8),), str(source), input_names=["input"],
                      opset_version=11, dynamo=False)  # fmt: skip
    opts = cnn_options(cnn_case, model=str(source), weights=None, eval=cnn_case["eval"], target="host")
    report = convert(replace(opts, backends=("onnxruntime", "tvm"), precisions=("int8",), out=tmp_path / "o"))
    graph = onnx.load(str(tmp_path / "o" / "onnx" / "model.onnx"))
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [13]
    for row in report["builds"]:
        assert row["status"] == "ok", row.get("reason")
        acc = row["accuracy"]
        assert acc["top1_agreement"] >= 0.97 and acc["cosine_min"] > 0.9
        assert acc["confident"]["samples"] > 0 and acc["confident"]["top1_agreement"] >= acc["top1_agreement"] - 0.02
        assert acc["top5_contains_top1"] >= acc["top1_agreement"]
    lines = report["recommendation"]["lines"]
    best = report["recommendation"]["build"]
    fastest = min((r for r in report["builds"]), key=lambda r: r["latency_ms"]["p50"])
    assert (best["backend"], best["precision"]) == (fastest["backend"], fastest["precision"])
    assert "## Recommendation" in (tmp_path / "o" / "report.md").read_text() and lines[0].startswith("**")


def _row(backend, precision, p50, agreement=1.0, cosine_min=0.999, kind="measured", passed=True) -> dict:
    return {
        "backend": backend,
        "precision": precision,
        "device": "host x86_64",
        "status": "ok",
        "latency_ms": {"p50": p50},
        "latency_kind": kind,
        "accuracy": {"top1_agreement": agreement, "cosine_min": cosine_min, "cosine": cosine_min},
        "budget": {"passed": passed, "violations": [] if passed else ["x"]},
    }


def test_int8_that_does_not_pay_is_said_and_the_fastest_accurate_build_wins():
    rows = [_row("onnxruntime", "fp32", 14.0), _row("openvino", "int8", 19.0), _row("tflite", "int8", 25.0)]
    result = recommend(rows, budgeted=False)
    assert result["build"]["backend"] == "onnxruntime" and result["int8_pays"] is False
    assert "int8 does not pay on this device: onnxruntime fp32 at 14.000 ms" in result["lines"][1]
    rows[1]["latency_ms"]["p50"] = 7.0
    result = recommend(rows, budgeted=False)
    assert result["build"] == {"backend": "openvino", "precision": "int8", "device": "host x86_64"}
    assert result["int8_pays"] and "2.00×" in result["lines"][1]


def test_budgets_decide_when_given_and_an_inaccurate_build_is_never_recommended():
    rows = [_row("onnxruntime", "fp32", 14.0, passed=False), _row("tflite", "int8", 9.0, agreement=0.9)]
    assert recommend(rows, budgeted=True)["build"]["backend"] == "tflite"  # within every budget the user set
    assert recommend(rows, budgeted=False)["build"]["backend"] == "onnxruntime"  # 90 % is below edgekit's bar
    nothing = recommend(rows[1:], budgeted=False)
    assert nothing["build"] is None and "No build" in nothing["lines"][0]
    emulated = [_row("tvm", "int8", 300.0, kind="emulated")]
    assert "emulated" in recommend(emulated, budgeted=False)["lines"][0]


def test_an_int8_row_far_below_the_others_is_flagged_degraded():
    rows = [_row("onnxruntime", "fp32", 14.0), _row("tflite", "int8", 9.0, agreement=0.99, cosine_min=0.22)]
    rows.append(_row("openvino", "int8", 8.0, agreement=0.85, cosine_min=0.99))
    flag_degraded(rows)
    assert "degraded" not in rows[0]
    assert rows[1]["degraded"] == ["worst-sample cosine 0.220 (best build 0.999)"]
    assert rows[2]["degraded"] == ["top-1 agreement 85.0% (best build 100.0%)"]
    assert recommend(rows, budgeted=False)["build"]["backend"] == "onnxruntime"  # degraded builds are not picked
