"""The CI export step: --max-size-mb, --baseline regressions, JUnit XML read by a JUnit parser, --json."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from junitparser import Failure, JUnitXml
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.gates import Tolerances, against_baseline, row_regressions

runner = CliRunner()


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, cnn_case) -> dict:
    """A real host conversion of the trained digits CNN (ONNX Runtime fp32 + int8): the baseline."""
    root = tmp_path_factory.mktemp("ci")
    onnx_path = root / "cnn.onnx"
    torch.onnx.export(
        cnn_case["model"], (torch.zeros(1, 1, 8, 8),), str(onnx_path), input_names=["input"], dynamo=False
    )
    args = [
        *("convert", str(onnx_path), "--calib", str(cnn_case["calib"]), "--eval", str(cnn_case["eval"])),
        *("--target", "host", "--backends", "onnxruntime", "--precision", "fp32,int8", "--runs", "5"),
    ]
    result = runner.invoke(app, [*args, "--out", str(root / "base"), "--junit", str(root / "base.xml")])
    assert result.exit_code == 0, result.output
    return {"root": root, "args": args, "report": json.loads((root / "base" / "report.json").read_text())}


def test_junit_file_is_read_by_a_junit_parser(first_run):
    xml = JUnitXml.fromfile(str(first_run["root"] / "base.xml"))
    cases = [case for suite in xml for case in suite]
    assert sorted(c.name for c in cases) == ["onnxruntime fp32", "onnxruntime int8"]
    assert all(c.classname.startswith("edgekit.host.host") for c in cases)
    assert all(not c.result for c in cases)  # all passed
    assert "cosine=" in cases[0].system_out


def test_a_regression_against_the_baseline_fails_the_run_and_junit_says_why(first_run, tmp_path):
    baseline = copy.deepcopy(first_run["report"])
    int8 = next(b for b in baseline["builds"] if b["precision"] == "int8")
    int8["size_bytes"] = int8["size_bytes"] // 2  # an earlier run whose int8 build was half the size
    (tmp_path / "baseline.json").write_text(json.dumps(baseline))
    result = runner.invoke(
        app,
        [
            *first_run["args"],
            *("--out", str(tmp_path / "o"), "--baseline", str(tmp_path / "baseline.json")),
            *("--baseline-latency-ratio", "100", "--junit", str(tmp_path / "r.xml")),
        ],
    )
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["baseline"]["compared_builds"] == 2 and report["baseline"]["passed"]
    rows = {b["precision"]: b for b in report["builds"]}
    assert rows["fp32"]["budget"]["passed"]
    violations = rows["int8"]["budget"]["violations"]
    assert any("regression: size" in v for v in violations), violations
    cases = {c.name: c for suite in JUnitXml.fromfile(str(tmp_path / "r.xml")) for c in suite}
    assert isinstance(cases["onnxruntime int8"].result[0], Failure)
    assert "regression: size" in cases["onnxruntime int8"].result[0].message
    assert not cases["onnxruntime fp32"].result and not cases["baseline"].result


def test_same_run_against_itself_passes_and_json_is_the_report(first_run, tmp_path):
    result = runner.invoke(
        app,
        [
            *first_run["args"],
            *("--out", str(tmp_path / "o"), "--baseline", str(first_run["root"] / "base" / "report.json")),
            *("--baseline-latency-ratio", "100", "--json"),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["baseline"]["passed"] and report["baseline"]["compared_builds"] == 2
    assert all(b["budget"]["passed"] for b in report["builds"])


def test_max_size_budget(first_run, tmp_path):
    result = runner.invoke(app, [*first_run["args"], "--out", str(tmp_path / "o"), "--max-size-mb", "0.001"])
    assert result.exit_code == 1
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert all(any("size" in v for v in b["budget"]["violations"]) for b in report["builds"])


def test_a_missing_build_fails_the_baseline_gate(first_run):
    report = copy.deepcopy(first_run["report"])
    report["builds"] = [b for b in report["builds"] if b["precision"] == "fp32"]
    section = against_baseline(report, first_run["report"], "base", Tolerances())
    assert not section["passed"] and "onnxruntime int8" in section["violations"][0]


def test_regression_rules():
    base = {"accuracy": {"top1_agreement": 0.9, "cosine": 0.99}, "size_bytes": 100, "latency_ms": {"p50": 1.0}}
    base["latency_kind"] = "measured"
    same = copy.deepcopy(base)
    assert row_regressions(same, base, Tolerances()) == []
    slow = {**copy.deepcopy(base), "latency_ms": {"p50": 2.0}}
    assert any("p50" in r for r in row_regressions(slow, base, Tolerances()))
    emulated = {**slow, "latency_kind": "emulated"}
    assert row_regressions(emulated, {**base, "latency_kind": "emulated"}, Tolerances()) == []
    nan = {**copy.deepcopy(base), "accuracy": {"top1_agreement": float("nan"), "cosine": 0.99}}
    assert any("top-1" in r for r in row_regressions(nan, base, Tolerances()))


def test_bad_baseline_and_junit_paths_are_refused_before_any_work(first_run, tmp_path):
    (tmp_path / "nope.json").write_text("{}")
    for extra, expect in (
        (["--baseline", str(tmp_path / "nope.json")], "not an edgekit report.json"),
        (["--junit", str(tmp_path / "missing" / "r.xml")], "does not exist"),
    ):
        result = runner.invoke(app, [*first_run["args"], "--out", str(tmp_path / "o"), *extra])
        assert result.exit_code == 2 and expect in result.output, result.output
        assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_the_github_actions_export_step_run_locally(first_run, tmp_path, cnn_case):
    """examples/ci-export.sh (what the GitHub Actions example runs): passes, then catches a budget and a regression."""
    import os
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "ci-export.sh"
    regressed = copy.deepcopy(first_run["report"])
    for row in regressed["builds"]:
        row["size_bytes"] //= 2
    (tmp_path / "smaller.json").write_text(json.dumps(regressed))
    common = {
        "EDGEKIT_MODEL": str(first_run["root"] / "cnn.onnx"),
        "EDGEKIT_CALIB": str(cnn_case["calib"]),
        "EDGEKIT_EVAL": str(cnn_case["eval"]),
        "EDGEKIT_TARGET": "host",
        "EDGEKIT_ARGS": "--backends onnxruntime --precision fp32,int8 --runs 5 --baseline-latency-ratio 100",
    }
    runs = {
        "passes": ({"EDGEKIT_BASELINE": str(first_run["root"] / "base" / "report.json")}, 0),
        "budget": ({"EDGEKIT_ARGS": common["EDGEKIT_ARGS"] + " --max-size-mb 0.001"}, 1),
        "regression": ({"EDGEKIT_BASELINE": str(tmp_path / "smaller.json")}, 1),
    }
    for name, (env, code) in runs.items():
        out = tmp_path / name / "edgekit"
        full = {**os.environ, **common, **env, "EDGEKIT_OUT": str(out)}
        proc = subprocess.run(["bash", str(script)], env=full, capture_output=True, text=True, timeout=600)
        assert proc.returncode == code, (name, proc.stdout[-1500:], proc.stderr[-1500:])
        assert "# edgekit report — target host" in proc.stdout  # report.md, for the job summary
        suite = JUnitXml.fromfile(str(out.parent / "edgekit-junit.xml"))
        failed = [c.name for s in suite for c in s if c.result]
        assert bool(failed) == bool(code), (name, failed)


def test_doctor_names_what_is_missing_and_how_to_add_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no tools at all
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    found = {c["name"]: c for c in json.loads(result.stdout)}
    assert not found["qemu-aarch64-static"]["present"] and "qemu-user-static" in found["qemu-aarch64-static"]["fix"]
    emulated = found["emulated arm64 device"]
    assert not emulated["present"] and emulated["fix"] == "edgekit device prepare --target arm64"
    assert found["tf2onnx"]["present"]


def test_a_recipe_holds_the_options_and_flags_override_it(first_run, cnn_case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "edgekit.toml").write_text(
        "\n".join(
            [
                f'model = "{first_run["root"] / "cnn.onnx"}"',
                f'calib = "{cnn_case["calib"]}"',
                'target = "host"',
                'backends = ["onnxruntime"]',
                'precision = ["fp32", "int8"]',
                "runs = 3",
                'out = "from_recipe"',
                "min-top1-agreement = 0.9",
            ]
        )
    )
    result = runner.invoke(app, ["convert", "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "from_recipe" / "report.json").read_text())
    assert [b["precision"] for b in report["builds"]] == ["fp32", "int8"]
    assert report["settings"]["recipe"]["options"]["min-top1-agreement"] == 0.9
    result = runner.invoke(app, ["convert", "--quiet", "--precision", "fp32", "--out", "flags"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "flags" / "report.json").read_text())
    assert [b["precision"] for b in report["builds"]] == ["fp32"] and "precision" not in report["settings"]["recipe"][
        "options"
    ]
    (tmp_path / "bad.toml").write_text("runs = 'many'\n")
    result = runner.invoke(app, ["convert", "--config", "bad.toml"])
    assert result.exit_code == 2 and "'runs' = 'many'" in result.output and "Traceback" not in result.output
