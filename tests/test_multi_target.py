"""Several targets in one run (from the command line or a recipe): a folder per target, one summary, one gate."""

from __future__ import annotations

import json

import pytest
from junitparser import JUnitXml
from typer.testing import CliRunner

from edgekit.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory, cnn_case) -> dict:
    root = tmp_path_factory.mktemp("multi")
    recipe = root / "export.toml"
    recipe.write_text(
        f'model = "edgekit.models.small_cnn:SmallCNN"\nweights = "{cnn_case["weights"]}"\n'
        f'calib = "{cnn_case["calib"]}"\neval = "{cnn_case["eval"]}"\ntarget = ["host", "arm64"]\n'
        'device = "host"\nbackends = ["onnxruntime"]\nprecision = ["fp32"]\nruns = 5\n'
    )
    out = root / "out"
    result = runner.invoke(app, ["convert", "--config", str(recipe), "--out", str(out), "--junit", str(root / "j.xml")])
    assert result.exit_code == 0, result.output
    return {"root": root, "recipe": recipe, "out": out}


def test_each_target_gets_its_folder_and_one_summary_covers_them(recipe_run):
    out = recipe_run["out"]
    summary = json.loads((out / "summary.json").read_text())
    assert [t["target"] for t in summary["targets"]] == ["host", "arm64"]
    assert [b["target"] for b in summary["builds"]] == ["host", "arm64"]
    for name in ("host", "arm64"):
        report = json.loads((out / name / "report.json").read_text())
        assert report["target"]["name"] == name and report["builds"][0]["status"] == "ok"
        assert (out / name / "report.html").is_file() and (out / name / "onnxruntime_fp32").is_dir()
        assert report["settings"]["recipe"]["options"]["target"] == ["host", "arm64"]
    assert "| arm64 | onnxruntime | fp32 |" in (out / "summary.md").read_text()
    suites = list(JUnitXml.fromfile(str(recipe_run["root"] / "j.xml")))
    assert [s.name for s in suites] == ["edgekit convert (host)", "edgekit convert (arm64)"]


def test_a_summary_is_a_baseline_for_every_target(recipe_run, tmp_path):
    args = ["convert", "--config", str(recipe_run["recipe"]), "--baseline", str(recipe_run["out"] / "summary.json")]
    result = runner.invoke(app, [*args, "--baseline-latency-ratio", "100", "--out", str(tmp_path / "o"), "--json"])
    assert result.exit_code == 0, result.output
    reports = json.loads(result.output)["reports"]
    assert [r["baseline"]["compared_builds"] for r in reports] == [1, 1]
    # A baseline without this target's builds compares nothing: that fails instead of passing silently.
    host_only = recipe_run["out"] / "host" / "report.json"
    result = runner.invoke(
        app, [*args[:3], "--target", "arm64", "--baseline", str(host_only), "--out", str(tmp_path / "p")]
    )
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    assert "no build for target arm64" in report["baseline"]["violations"][0]


@pytest.mark.parametrize(("targets", "problem"), [("host,host", "name one twice"), ("host,nope", "nope")])
def test_bad_target_lists_are_refused_before_any_work(recipe_run, tmp_path, targets, problem):
    result = runner.invoke(
        app, ["convert", "--config", str(recipe_run["recipe"]), "--target", targets, "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and problem in result.output
    assert not (tmp_path / "o").exists() and list(tmp_path.iterdir()) == []
