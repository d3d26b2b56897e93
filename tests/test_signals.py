"""SIGTERM (a CI cancel) and SIGHUP (a closed terminal) mid-run: cleaned up exactly like Ctrl-C.

A real ``edgekit convert`` process is signalled while a build worker, or the emulated device's qemu runner,
is running; afterwards no staging folder exists, the older output is intact, and every process the run
started is gone.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from edgekit.safety import MARKER


def _descendants(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize(
    ("signum", "waits_for", "extra"),
    [
        (signal.SIGTERM, "edgekit.build_worker", ["--target", "host", "--backends", "tflite,onnxruntime"]),
        (signal.SIGHUP, "qemu-aarch64", ["--target", "arm64", "--device", "emulated", "--backends", "onnxruntime"]),
    ],
    ids=["sigterm-during-build", "sighup-during-emulated-run"],
)
def test_signal_mid_run_leaves_nothing_behind(tmp_path, cnn_case, signum, waits_for, extra):
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text("")
    (out / "report.json").write_text('{"earlier": true}')
    cmd = [
        sys.executable,
        "-m",
        "edgekit.cli",
        "convert",
        "edgekit.models.small_cnn:SmallCNN",
        "--weights",
        str(cnn_case["weights"]),
        "--calib",
        str(cnn_case["calib"]),
        "--precision",
        "fp32",
        "--out",
        str(out),
        *extra,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    parent = psutil.Process(proc.pid)
    seen: dict[int, str] = {}
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            for child in _descendants(parent):
                try:
                    seen.setdefault(child.pid, " ".join(child.cmdline()))
                except psutil.Error:
                    continue
            if any(waits_for in cmdline for cmdline in seen.values()):
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"convert ended before {waits_for} ran: {proc.communicate()[1][-2000:]}"
        assert any(waits_for in c for c in seen.values()), f"no {waits_for} within 300 s"
        time.sleep(1.0)
        for child in _descendants(parent):
            seen.setdefault(child.pid, "?")
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    assert "nothing was published" in stderr
    time.sleep(0.5)
    left = {pid: cmdline for pid, cmdline in seen.items() if not _gone(pid)}
    assert not left, f"processes left running: {left}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], list(tmp_path.iterdir())
    assert (out / "report.json").read_text() == '{"earlier": true}'
    assert sorted(p.name for p in Path(out).iterdir()) == sorted([MARKER, "report.json"])
