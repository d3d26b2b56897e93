"""Accuracy budget: a CNN whose int8 collapses keeps its most sensitive layers in float and meets the budget."""

from __future__ import annotations

import pytest
import torch

from edgekit import Budgets, convert, int8
from edgekit.data import Dataset, TensorSpec
from edgekit.fallback import find_fallback
from edgekit.models.small_cnn import SmallCNN
from edgekit.onnx_hub import QuantConfig, export_onnx
from edgekit.report import exit_code
from edgekit.source import SourceModel
from tests.conftest import cnn_options


@pytest.fixture(scope="module")
def outlier_weights(tmp_path_factory, cnn_case):
    """The trained digits CNN with one channel scaled ×300 and the next conv scaled back: the same function in
    fp32, but a per-tensor int8 range for that activation that crushes every other channel."""
    model = SmallCNN()
    model.load_state_dict(torch.load(cnn_case["weights"], weights_only=True))
    with torch.no_grad():
        model.features[1].weight[0] *= 300
        model.features[1].bias[0] *= 300
        model.features[3].weight[:, 0] /= 300
    path = tmp_path_factory.mktemp("outlier") / "cnn_outlier.pt"
    torch.save(model.state_dict(), path)
    return path


def _convert(tmp_path, weights, cnn_case, budget, backends=("onnxruntime", "tvm", "tflite")):
    return convert(
        cnn_options(
            cnn_case,
            weights=weights,
            quant=QuantConfig(),  # edgekit's defaults, auto ranges included
            target="host",
            eval=cnn_case["eval"],
            out=tmp_path,
            backends=backends,
            runs=2,
            warmup=0,
            budgets=Budgets(max_accuracy_drop=budget),
        )
    )


def _drop(row) -> float:
    task = row["accuracy"]["task_metric"]
    return (task["original"] - task["build"]) * 100


def test_int8_collapse_is_real_without_a_budget(tmp_path, outlier_weights, cnn_case):
    report = _convert(tmp_path / "o", outlier_weights, cnn_case, None, backends=("onnxruntime",))
    rows = {b["backend"]: b for b in report["builds"]}
    assert report["accuracy_fallback"] is None
    assert _drop(rows["onnxruntime"]) > 20


def test_budget_keeps_the_fewest_sensitive_layers_in_float(tmp_path, outlier_weights, cnn_case):
    report = _convert(tmp_path / "o", outlier_weights, cnn_case, 3.0)
    fb = report["accuracy_fallback"]
    assert fb["met_on_calibration"] and 1 <= len(fb["kept_float"]) < 4, fb  # not everything went back to float
    assert fb["chosen_by"] == "NNCF's quantize_with_accuracy_control"  # the shared graph is NNCF's
    assert fb["agreement_after"] >= 0.97 > fb["agreement_before"]
    rows = {b["backend"]: b for b in report["builds"]}
    ort = rows["onnxruntime"]  # built from the QDQ graph with those layers in float
    assert ort["budget"]["passed"], ort["budget"]
    assert _drop(ort) <= 3.0
    assert "kept in float" in ort["quantization"]
    assert rows["tvm"]["precision"] == "fp32" and rows["tvm"]["budget"]["passed"]  # TVM int8 is not offered
    # onnx2tf has no per-layer deny list: the TFLite row says so, misses the budget, and fails the run.
    assert any("not applied" in n for n in rows["tflite"]["notes"])
    assert not rows["tflite"]["budget"]["passed"]
    assert exit_code(report) == 1
    assert "## Accuracy fallback" in (tmp_path / "o" / "report.md").read_text()


def test_a_graph_not_made_by_nncf_gets_edgekits_own_search(tmp_path, outlier_weights, digits):
    """``--quantizer ort``: NNCF's search would quantize anew with other settings, so edgekit ranks the ORT
    graph's layers itself (each alone in float), then keeps the fewest that meet the budget."""
    model = SmallCNN()
    model.load_state_dict(torch.load(outlier_weights, weights_only=True))
    source = SourceModel("pytorch", "outlier CNN", 0, module=model.eval(), input_names=["input"])
    fp32 = export_onnx(source, [TensorSpec("input", (1, 1, 8, 8), "float32")], tmp_path / "fp32.onnx")
    calib = Dataset({"input": digits[0][:128]}, None, "digits")
    qdq = int8.quantize_static(
        fp32, tmp_path / "ort.onnx", calib, tmp_path, QuantConfig(quantizer="ort"), lambda n: None
    )
    result = find_fallback(fp32, qdq, calib, 3.0)
    assert result.search == "edgekit's per-layer search" and result.met, result
    assert 1 <= len(result.kept_float) < 4 and result.agreement_after >= 0.97 > result.agreement_before
    assert result.sensitivity[0][0] in result.kept_float  # the most sensitive layer went back first
