"""The board farm: real board servers behind TVM's RPC tracker on 127.0.0.1 (one inside the emulated arm64
device), builds fanned out over several boards at once, a board killed mid-run."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from edgekit import convert
from edgekit.cli import app
from edgekit.errors import EdgekitError
from edgekit.farm import BOARD_SCRIPT, BoardRun, Farm, FarmAddress, boards_under, free_port, merge, tracker_summary
from edgekit.procs import kill_group
from edgekit.runners import RunnerError, RunnerTimeout, RunResult
from tests.conftest import cnn_options


@pytest.fixture(scope="module")
def farm():
    with Farm("t", host_boards=2) as running:
        yield running


def _board(name: str, p50: float, emulated: bool = False, out: float = 0.0) -> BoardRun:
    info = {"latencies_ms": [p50] * 5, "device": {"machine": "aarch64"}, "runtime": "x", "load_s": 0.1}
    facts = {"name": name, "machine": "aarch64", "emulated": emulated}
    return BoardRun(name, facts, RunResult([np.full((2, 3), out, np.float32)], info))


def test_merge_gives_median_spread_outliers_and_keeps_failed_boards():
    address = FarmAddress.parse("rpc://10.0.0.5:9190/rpi5")
    runs = [_board("a", 10.0), _board("b", 11.0), _board("c", 30.0, out=0.5), _board("q", 900.0, emulated=True)]
    runs.append(BoardRun("d", {"name": "d"}, None, "connection reset"))
    farm = merge(runs, 3.0, address).info["farm"]
    assert farm["median_p50_ms"] == 11.0 and farm["ok"] == 4 and farm["failed"] == 1
    assert farm["spread"] == pytest.approx((30 - 10) / 11)
    by = {b["board"]: b for b in farm["boards"]}
    assert by["c"]["outlier"] and not by["a"]["outlier"] and not by["b"]["outlier"]
    assert by["c"]["max_abs_diff_vs_first"] == 0.5 and by["b"]["max_abs_diff_vs_first"] == 0.0
    assert not by["q"]["counted"] and not by["q"]["outlier"]  # an emulated board's time is relative only
    assert by["d"] == {"board": "d", "machine": "?", "emulated": False, "status": "failed", "error": "connection reset"}
    with pytest.raises(RunnerTimeout):
        merge([BoardRun("a", error="slow", timed_out=True)], 1.0, address)
    with pytest.raises(RunnerError, match="every board failed — a: gone"):
        merge([BoardRun("a", error="gone"), BoardRun("b", error="slow", timed_out=True)], 1.0, address)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("rpc://10.0.0.5:9190", "is not rpc://TRACKER[:PORT]/KEY"),
        ("rpc://10.0.0.5:99999/k", "invalid tracker port"),
        ("rpc://10.0.0.5/-oProxy", "is not a plain name"),
    ],
)
def test_bad_farm_urls_are_one_line(url, says):
    with pytest.raises(EdgekitError) as caught:
        FarmAddress.parse(url)
    assert says in str(caught.value)


def test_farm_errors_exit_2_with_one_line(tmp_path, farm, cnn_case):
    np.savez(tmp_path / "in.npz", x=np.zeros((1, 1, 8, 8), np.float32))
    dead = f"rpc://127.0.0.1:{free_port()}/t"  # nothing listens there
    cases = [
        (["--device", dead], "no RPC tracker answers at"),
        (["--device", farm.url, "--boards", "3"], "has 2 board(s) under key 't', --boards 3 needs 3"),
        (["--device", "host", "--boards", "2"], "--boards 2 needs a board farm"),
    ]
    for args, says in cases:
        out = tmp_path / "o"
        argv = ["convert", "edgekit.models.small_cnn:SmallCNN", "--weights", str(cnn_case["weights"])]
        result = CliRunner().invoke(app, [*argv, "--calib", str(cnn_case["calib"]), "--out", str(out), *args])
        assert result.exit_code == 2, result.output
        assert says in result.output and "Traceback" not in result.output
        assert not out.exists()


@pytest.mark.slow
def test_a_plain_tvm_rpc_server_runs_tvm_builds_natively_and_names_what_it_cannot_run(tmp_path, farm, cnn_case):
    convert(
        cnn_options(
            cnn_case,
            target="host",
            device="host",
            out=tmp_path / "o",
            backends=("tvm", "onnxruntime"),
            precisions=("fp32",),
            runs=2,
            warmup=0,
        )
    )
    np.savez(tmp_path / "in.npz", x=np.load(cnn_case["eval"])["input"][:6])
    cmd = [
        sys.executable,
        "-m",
        "tvm.exec.rpc_server",
        "--tracker",
        f"127.0.0.1:{farm.port}",
        "--key",
        "plain",
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
        "--port-end",
        "65535",
    ]
    plain = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not boards_under(tracker_summary("127.0.0.1", farm.port), "plain"):
            assert time.monotonic() < deadline, "the plain server did not register"
            time.sleep(0.3)
        url = f"rpc://127.0.0.1:{farm.port}/plain"
        out = tmp_path / "tvm.json"
        args = ["profile", str(tmp_path / "o" / "tvm_fp32"), "--inputs", str(tmp_path / "in.npz"), "--device", url]
        result = CliRunner().invoke(app, [*args, "--out", str(out)])
        assert result.exit_code == 0, result.output
        board = json.loads(out.read_text())["boards"]["boards"][0]
        assert board["status"] == "ok" and board["board"] == "plain TVM RPC server 1"
        assert board["machine"] == "x86_64" and board["latency_ms"]["n"] == 20
        assert "tvm RPC (plain TVM RPC server" in board["runtime"]
        args = ["profile", str(tmp_path / "o" / "onnxruntime_fp32"), "--inputs", str(tmp_path / "in.npz")]
        result = CliRunner().invoke(app, [*args, "--device", url])
        assert result.exit_code == 2
        assert "it runs TVM builds only; for onnxruntime builds start edgekit's board server" in result.output
    finally:
        kill_group(plain)


def test_convert_runs_every_build_on_two_boards_at_once(tmp_path, farm, cnn_case):
    out = tmp_path / "o"
    report = convert(
        cnn_options(
            cnn_case,
            target="host",
            device=farm.url,
            boards=2,
            eval=cnn_case["eval"],
            out=out,
            backends=("onnxruntime",),
            precisions=("fp32", "int8"),
            runs=5,
            warmup=1,
        )
    )
    assert report["runner"].startswith(f"RPC farm {farm.url}: 2 board(s) (x86_64)")
    for row in report["builds"]:
        assert row["status"] == "ok", row
        farm_info = row["boards"]
        assert farm_info["ok"] == 2 and farm_info["failed"] == 0
        assert sorted(b["board"] for b in farm_info["boards"]) == ["host-1", "host-2"]
        assert all(b["max_abs_diff_vs_first"] == 0.0 for b in farm_info["boards"])  # same build, same outputs
        assert len(row["latencies_ms"]) == 10  # both boards' timed runs
        assert row["accuracy"]["top1_agreement"] > 0.95
    md = (out / "report.md").read_text()
    assert "## Board farm" in md and "| host-1 | x86_64 | ok |" in md and "| host-2 | x86_64 | ok |" in md
    status = CliRunner().invoke(app, ["farm", "status", f"rpc://127.0.0.1:{farm.port}"])
    assert status.exit_code == 0 and "t: 2 board(s)" in status.output


@pytest.mark.slow
def test_profile_on_three_boards_one_emulated_one_killed_mid_run(tmp_path, cnn_case):
    """Tracker + three boards: one on this host, one inside the emulated arm64 device, one killed while it
    runs. The profile reports the two others and the killed board's error."""
    np.savez(tmp_path / "in.npz", x=np.load(cnn_case["eval"])["input"][:8])
    convert(
        cnn_options(
            cnn_case,
            target="arm64",
            device="host",
            out=tmp_path / "o",
            backends=("tvm",),
            precisions=("fp32",),
            runs=2,
            warmup=0,
        )
    )
    marker = tmp_path / "slow-board-started"
    # the third board starts its runner late (it writes the marker, then sleeps): it is surely mid-run when killed
    slow_python = ["sh", "-c", f'touch {marker}; sleep 120; exec {sys.executable} "$@"', "sh"]
    with Farm("mix", host_boards=1, emulated=1) as farm:
        cmd = [
            sys.executable,
            str(BOARD_SCRIPT),
            "--tracker",
            f"127.0.0.1:{farm.port}",
            "--key",
            "mix",
            "--host",
            "127.0.0.1",
            "--port",
            "9411",
            "--port-end",
            "9499",
            "--name",
            "doomed",
            "--python",
            json.dumps(slow_python),
        ]
        doomed = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while len(boards_under(tracker_summary("127.0.0.1", farm.port), "mix")) < 3:
                assert time.monotonic() < deadline, "the third board did not register"
                time.sleep(0.3)
            result: dict = {}
            args = [
                "profile",
                str(tmp_path / "o" / "tvm_fp32"),
                "--inputs",
                str(tmp_path / "in.npz"),
                "--device",
                farm.url,
                "--boards",
                "3",
                "--out",
                str(tmp_path / "p.json"),
            ]
            worker = threading.Thread(target=lambda: result.update(r=CliRunner().invoke(app, args)))
            started = time.monotonic()
            worker.start()
            while not marker.exists():
                assert time.monotonic() < deadline + 120, "the third board never started its runner"
                time.sleep(0.2)
            kill_group(doomed)
            worker.join(timeout=600)
            wall = time.monotonic() - started
        finally:
            kill_group(doomed)
    assert result["r"].exit_code == 0, result["r"].output
    farm_info = json.loads((tmp_path / "p.json").read_text())["boards"]
    by = {b["board"]: b for b in farm_info["boards"]}
    assert by["host-1"]["status"] == "ok" and by["host-1"]["machine"] == "x86_64"
    emulated = by["emulated-arm64-1"]
    assert emulated["status"] == "ok" and emulated["machine"] == "aarch64" and emulated["emulated"]
    assert emulated["device"]["cpu"] == "Cortex-A76"  # the arm64 library ran natively in the emulated device
    assert emulated["max_abs_diff_vs_first"] < 1e-4  # aarch64 and x86-64 libraries agree
    assert by["doomed"]["status"] == "failed" and by["doomed"]["error"]
    assert farm_info["ok"] == 2 and farm_info["failed"] == 1
    assert "doomed" in result["r"].output and "FAILED" in result["r"].output
    print(f"3 boards (one killed): {wall:.1f} s wall, farm {farm_info['wall_s']:.1f} s")


def test_farm_up_serves_until_sigterm_and_leaves_nothing_running():
    import os
    import signal

    import psutil

    port = free_port()
    cmd = [sys.executable, "-m", "edgekit.cli", "farm", "up", "--boards", "1", "--port", str(port), "--key", "up"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert f"--device rpc://127.0.0.1:{port}/up" in line, line + proc.stderr.read()
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 2  # the tracker and the board (and their workers)
        status = CliRunner().invoke(app, ["farm", "status", f"rpc://127.0.0.1:{port}"])
        assert "up: 1 board(s), 1 free" in status.output, status.output
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, alive
    finally:
        kill_group(proc)
