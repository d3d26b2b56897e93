"""TVM tuning: MetaSchedule searches the workloads with fewer trials in the records than asked (on boards
through the tracker, or on this machine), writes them to a shareable records folder (one database per exact
target), and the next conversion goes on from there or compiles with no search."""

from __future__ import annotations

import json

import pytest
from edgekit.converters.tvm.tune import TuneConfig
from typer.testing import CliRunner

from edgekit import convert
from edgekit.cli import app
from edgekit.farm import Farm
from tests.conftest import cnn_options


def _tvm(report: dict, out) -> tuple[dict, dict]:
    row = next(b for b in report["builds"] if b["backend"] == "tvm")
    return row, json.loads((out / "tvm_fp32" / "build.json").read_text())["tuning"]


def test_records_are_kept_per_exact_target(tmp_path):
    """MetaSchedule finds a record by workload alone: each target (triple, CPU, features, cores) has its own."""
    arm = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"]}
    config = TuneConfig(4, 1.0, tmp_path, cores=4)
    folder = config.folder(arm)
    assert folder.parent == tmp_path and folder.name.startswith("aarch64-linux-gnu-cortex-a76-4cores-")
    assert config.folder(dict(arm)) == folder  # the same target, the same records
    others = [
        config.folder({**arm, "mattr": ["+neon"]}),
        config.folder({**arm, "mcpu": "cortex-a55"}),
        TuneConfig(4, 1.0, tmp_path, cores=8).folder(arm),
        config.folder({"kind": "llvm", "mtriple": "x86_64-linux-gnu"}),
    ]
    assert len({folder, *others}) == 5 and others[-1].name.startswith("x86_64-linux-gnu-generic-4cores-")


@pytest.mark.slow
def test_budget_stops_the_board_search_the_next_conversions_go_on_then_no_search(tmp_path, cnn_case):
    records = tmp_path / "records"
    common = dict(target="host", eval=cnn_case["eval"], backends=("tvm",), precisions=("fp32",), runs=3, warmup=1)
    # On a board, a budget of about a second: the first workload's turn (2 trials) runs, then the search stops.
    with Farm("tune", host_boards=1) as farm:
        first = convert(
            cnn_options(
                cnn_case,
                device=farm.url,
                out=tmp_path / "a",
                tune_trials=2,
                tune_minutes=0.02,
                tuning_records=records,
                **common,
            )
        )
    row, tuning = _tvm(first, tmp_path / "a")
    assert row["status"] == "ok", row
    assert tuning["workloads"] >= 4 and tuning["from_records"] == 0, tuning
    assert tuning["stopped_at_budget"] and 1 <= tuning["trials"] <= 2, tuning
    assert tuning["measured_on"] == f"boards rpc://127.0.0.1:{farm.port}/tune"
    reached = tuning["workloads"] - tuning["untuned"]
    assert 1 <= reached < tuning["workloads"]  # the rest keep TVM's default schedules in this build
    assert any("stopped at its time budget" in n for n in row["notes"]), row["notes"]
    assert row["accuracy"]["top1_agreement"] >= 0.99  # the tuned kernels compute the same function

    # The next conversion (no budget, measured here) searches only the workloads the first did not reach.
    second = convert(cnn_options(cnn_case, out=tmp_path / "b", tune_trials=1, tuning_records=records, **common))
    row, tuning = _tvm(second, tmp_path / "b")
    assert row["status"] == "ok" and not tuning["stopped_at_budget"], tuning
    assert tuning["from_records"] == reached and tuning["searched"] == tuning["workloads"] - reached
    assert tuning["untuned"] == 0 and tuning["trials"] >= tuning["searched"] and tuning["measured_on"] == "this machine"
    assert any(n.startswith("tuned with MetaSchedule") for n in row["notes"])
    assert tuning["resumed"] == 0 and tuning["records"].startswith(str(records / "x86_64-linux-gnu-"))

    # Asked for 2 trials, the workloads searched with 1 go on from the records; the first's are done.
    third = convert(cnn_options(cnn_case, out=tmp_path / "c", tune_trials=2, tuning_records=records, **common))
    row, tuning = _tvm(third, tmp_path / "c")
    assert row["status"] == "ok" and tuning["from_records"] == reached, tuning
    assert tuning["searched"] == tuning["resumed"] == tuning["workloads"] - reached
    assert any("going on from the records" in n for n in row["notes"]), row["notes"]
    saved = {p.name: p.read_bytes() for p in records.glob("*/database_*.json")}
    assert len(saved) == 2 and all(saved.values())

    # Every workload has its trials (or its search space ran out): no search, the records are left as they were.
    fourth = convert(cnn_options(cnn_case, out=tmp_path / "d", tune_trials=2, tuning_records=records, **common))
    row, tuning = _tvm(fourth, tmp_path / "d")
    assert row["status"] == "ok", row
    assert tuning["searched"] == 0 and tuning["from_records"] == tuning["workloads"] and tuning["untuned"] == 0
    assert any("no search needed" in n for n in row["notes"])
    assert {p.name: p.read_bytes() for p in records.glob("*/database_*.json")} == saved
    assert row["accuracy"]["top1_agreement"] >= 0.99


def test_tuning_for_another_architecture_needs_its_boards(tmp_path, cnn_case):
    report = convert(
        cnn_options(
            cnn_case,
            target="arm64",
            device="host",
            out=tmp_path / "o",
            backends=("tvm",),
            precisions=("fp32",),
            runs=2,
            warmup=0,
            tune_trials=4,
            tuning_records=tmp_path / "records",
        )
    )
    row = report["builds"][0]
    assert row["status"] == "ok", row
    assert any("untuned: tuning for aarch64 measures candidates on aarch64 boards" in n for n in row["notes"])
    assert not list((tmp_path / "records").rglob("database_tuning_record.json"))


def test_bad_tuning_options_exit_2_with_one_line(tmp_path, cnn_case):
    (tmp_path / "file").write_text("x")
    cases = [
        (["--tune", "-1"], "--tune -1 must be an integer ≥ 0"),
        (["--tune", "2", "--tuning-records", str(tmp_path / "file")], "is a file"),
        (["--tune", "2", "--tune-minutes", "0"], "--tune-minutes 0.0 must be positive"),
        (["--tune", "2", "--backends", "onnxruntime"], "--tune tunes TVM builds, and tvm is not among the backends"),
    ]
    for args, says in cases:
        out = tmp_path / "o"
        argv = ["convert", "edgekit.models.small_cnn:SmallCNN", "--weights", str(cnn_case["weights"]), "--target"]
        result = CliRunner().invoke(app, [*argv, "host", "--calib", str(cnn_case["calib"]), "--out", str(out), *args])
        assert result.exit_code == 2, result.output
        assert says in result.output and "Traceback" not in result.output
        assert not out.exists()
